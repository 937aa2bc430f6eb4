//! What moves over: the original's tables in foreign-key order (parents first), the columns
//! datamailer deliberately leaves behind, and the tables it has no place for. Every other
//! source column must exist here under the same name; one that does not stops the import
//! before anything is written (the original is newer than this list).

pub struct Table {
    pub name: &'static str,
    /// Source columns not carried, with the reason the report prints.
    pub not_carried: &'static [(&'static str, &'static str)],
    /// Triggers of ours that must not fire for history: a moved email event is not a new
    /// event, so it must not queue a client webhook again.
    pub quiet_triggers: &'static [&'static str],
    /// Run after the table is copied: the original's rows in states our runtime manages
    /// differently.
    pub fixup: Option<&'static str>,
}

const fn table(name: &'static str) -> Table {
    Table {
        name,
        not_carried: &[],
        quiet_triggers: &[],
        fixup: None,
    }
}

const MAILCHIMP: &str = "datamailer has no Mailchimp sync";

pub const TABLES: &[Table] = &[
    table("organizations"),
    table("audiences"),
    Table {
        not_carried: &[
            (
                "allowed_from_emails",
                "legacy: the original's migration 0011 folded it into sender_emails",
            ),
            ("mailchimp_api_key", MAILCHIMP),
            ("mailchimp_list_id", MAILCHIMP),
            ("mailchimp_enabled", MAILCHIMP),
        ],
        ..table("clients")
    },
    table("client_api_keys"),
    table("contacts"),
    table("subscriptions"),
    table("category_preferences"),
    table("tags"),
    Table {
        not_carried: &[("id", "the pair (contact_id, tag_id) is the key here")],
        ..table("contact_tags")
    },
    table("contact_source_metadata"),
    table("recipient_lists"),
    table("recipient_list_members"),
    table("recipient_list_import_jobs"),
    table("email_templates"),
    Table {
        // The original left a `sending` row stuck for ever (facts §3.3). Here an expired lease
        // hands it to reconciliation, which settles it without an operator.
        fixup: Some(
            "UPDATE transactional_messages SET lease_expires_at = updated_at
              WHERE status = 'sending' AND lease_expires_at IS NULL",
        ),
        ..table("transactional_messages")
    },
    table("campaigns"),
    table("campaign_recipients"),
    Table {
        quiet_triggers: &["email_events_client_webhook"],
        ..table("email_events")
    },
    table("cmp_callbacks"),
];

/// Tables of the original with no counterpart here, and why.
pub const LEFT_BEHIND: &[(&str, &str)] = &[
    ("mailchimp_tag_mappings", MAILCHIMP),
    ("mailchimp_syncs", MAILCHIMP),
    (
        "operator_audits",
        "the audit log of the original's operator UI, which datamailer does not have",
    ),
];
