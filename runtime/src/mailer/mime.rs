//! Raw MIME for messages with custom headers or extra parts (SES raw content, capture outbox).
//! Bcc is never written as a header; it travels only as an envelope destination.

use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;

use super::OutgoingEmail;

/// Splits "Display Name <addr>" into its parts; a bare address has no name.
pub fn split_address(s: &str) -> (Option<String>, String) {
    let s = s.trim();
    if let (Some(open), true) = (s.rfind('<'), s.ends_with('>')) {
        let name = s[..open].trim().trim_matches('"').trim();
        let addr = s[open + 1..s.len() - 1].trim();
        return (
            (!name.is_empty()).then(|| name.to_string()),
            addr.to_string(),
        );
    }
    (None, s.to_string())
}

fn address(s: &str) -> Address<'static> {
    let (name, addr) = split_address(s);
    Address::new_address(name, addr)
}

fn address_list(list: &[String]) -> Address<'static> {
    Address::new_list(list.iter().map(|s| address(s)).collect())
}

/// Builds the whole RFC 5322 message.
pub fn build(email: &OutgoingEmail) -> String {
    let mut mb = MessageBuilder::new()
        .from(address(&email.from))
        .to(address_list(&email.to))
        .subject(email.subject.clone());
    if !email.cc.is_empty() {
        mb = mb.cc(address_list(&email.cc));
    }
    if !email.reply_to.is_empty() {
        mb = mb.reply_to(address_list(&email.reply_to));
    }
    for (name, value) in &email.headers {
        mb = mb.header(name.clone(), Raw::new(value.clone()));
    }
    if !email.text_body.is_empty() {
        mb = mb.text_body(email.text_body.clone());
    }
    if !email.html_body.is_empty() || email.text_body.is_empty() {
        mb = mb.html_body(email.html_body.clone());
    }
    for (i, part) in email.parts.iter().enumerate() {
        let filename = part
            .filename
            .clone()
            .unwrap_or_else(|| format!("part-{}.txt", i + 1));
        mb = if part.disposition == "inline" {
            mb.inline(
                part.content_type.clone(),
                filename,
                part.content.clone().into_bytes(),
            )
        } else {
            mb.attachment(
                part.content_type.clone(),
                filename,
                part.content.clone().into_bytes(),
            )
        };
    }
    mb.write_to_string()
        .expect("writing MIME to a string cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailer::Part;

    #[test]
    fn raw_message_has_headers_parts_and_no_bcc() {
        let email = OutgoingEmail {
            from: "Courses <courses@example.com>".into(),
            to: vec!["a@example.com".into()],
            cc: vec!["c@example.com".into()],
            bcc: vec!["secret@example.com".into()],
            reply_to: vec!["r@example.com".into()],
            subject: "Invite".into(),
            text_body: "See attached".into(),
            headers: vec![("X-Campaign".into(), "spring".into())],
            parts: vec![Part {
                content_type: "text/calendar; method=REQUEST".into(),
                content: "BEGIN:VCALENDAR".into(),
                filename: Some("invite.ics".into()),
                disposition: "attachment".into(),
            }],
            ..Default::default()
        };
        let raw = build(&email);
        assert!(
            raw.contains("From: \"Courses\" <courses@example.com>"),
            "{raw}"
        );
        assert!(raw.contains("Cc: <c@example.com>"), "{raw}");
        assert!(raw.contains("Reply-To: <r@example.com>"), "{raw}");
        assert!(raw.contains("X-Campaign: spring"), "{raw}");
        assert!(raw.contains("invite.ics"), "{raw}");
        assert!(raw.contains("text/calendar"), "{raw}");
        // No Bcc header (a random MIME boundary may itself contain "bcc").
        assert!(
            !raw.lines().any(|l| l.to_lowercase().starts_with("bcc:")),
            "{raw}"
        );
        assert!(!raw.contains("secret@example.com"), "{raw}");
    }

    #[test]
    fn splits_display_names() {
        assert_eq!(
            split_address("Name <a@b.c>"),
            (Some("Name".into()), "a@b.c".into())
        );
        assert_eq!(split_address("a@b.c"), (None, "a@b.c".into()));
    }
}
