-- The datamailer data model (facts §1), minus the tables later capabilities bring
-- (recipient lists, CMP callbacks, Mailchimp, operator audits).
-- Conventions: bigint identity keys, timestamptz in UTC, NOT NULL '' for blank strings,
-- jsonb NOT NULL for JSON.

CREATE TABLE organizations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        varchar(255) NOT NULL,
    slug        varchar(120) NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audiences (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            varchar(255) NOT NULL,
    slug            varchar(120) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, slug)
);

CREATE TABLE clients (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id     bigint NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                varchar(255) NOT NULL,
    slug                varchar(120) NOT NULL,
    -- Sender identities: [{"id": slug, "email": "Name <addr>" | "addr"}] and the default id.
    sender_emails       jsonb NOT NULL DEFAULT '[]',
    default_sender_id   varchar(80) NOT NULL DEFAULT '',
    default_from_email  varchar(320) NOT NULL DEFAULT '',
    cmp_webhook_url     varchar(2048) NOT NULL DEFAULT '',
    cmp_webhook_token   varchar(255) NOT NULL DEFAULT '',
    is_active           boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, slug)
);
CREATE INDEX clients_is_active_idx ON clients (is_active);

-- API keys are 256-bit random secrets: we keep only "sha256$<hex>" of the raw key and find
-- the row by its public id, so no slow KDF is needed (facts §4.1 [DECIDE]).
CREATE TABLE client_api_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id     bigint NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    name          varchar(120) NOT NULL,
    key_hash      varchar(255) NOT NULL,
    public_id     varchar(32) NOT NULL UNIQUE,
    notes         text NOT NULL DEFAULT '',
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX client_api_keys_active_name ON client_api_keys (client_id, name) WHERE revoked_at IS NULL;
CREATE INDEX client_api_keys_client_revoked ON client_api_keys (client_id, revoked_at);

CREATE TABLE contacts (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email                    varchar(320) NOT NULL,
    normalized_email         varchar(320) NOT NULL UNIQUE,
    verified_at              timestamptz,
    email_validation_status  varchar(30) NOT NULL DEFAULT 'unknown',
    email_validation_reason  varchar(255) NOT NULL DEFAULT '',
    email_validated_at       timestamptz,
    global_unsubscribed_at   timestamptz,
    hard_bounced_at          timestamptz,
    complained_at            timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contacts_verified_at_idx ON contacts (verified_at);
CREATE INDEX contacts_validation_status_idx ON contacts (email_validation_status);
CREATE INDEX contacts_global_unsub_idx ON contacts (global_unsubscribed_at);
CREATE INDEX contacts_hard_bounced_idx ON contacts (hard_bounced_at);
CREATE INDEX contacts_complained_idx ON contacts (complained_at);

CREATE TABLE subscriptions (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id          bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    audience_id         bigint NOT NULL REFERENCES audiences(id) ON DELETE CASCADE,
    client_id           bigint REFERENCES clients(id) ON DELETE CASCADE,
    status              varchar(20) NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'subscribed', 'unsubscribed')),
    verified_at         timestamptz,
    unsubscribed_at     timestamptz,
    unsubscribe_reason  varchar(255) NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (contact_id, audience_id, client_id)
);
CREATE UNIQUE INDEX subscriptions_audience_level ON subscriptions (contact_id, audience_id) WHERE client_id IS NULL;
CREATE INDEX subscriptions_scope_status ON subscriptions (audience_id, client_id, status);
CREATE INDEX subscriptions_contact_updated ON subscriptions (contact_id, updated_at);

CREATE TABLE category_preferences (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id      bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    audience_id     bigint NOT NULL REFERENCES audiences(id) ON DELETE CASCADE,
    client_id       bigint NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    tag             varchar(80) NOT NULL,
    label           varchar(120) NOT NULL DEFAULT '',
    enabled         boolean NOT NULL DEFAULT true,
    updated_reason  varchar(255) NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (contact_id, audience_id, client_id, tag)
);
CREATE INDEX category_preferences_scope ON category_preferences (client_id, audience_id, tag, enabled);
CREATE INDEX category_preferences_contact ON category_preferences (contact_id, client_id, audience_id);

CREATE TABLE tags (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    audience_id  bigint NOT NULL REFERENCES audiences(id) ON DELETE CASCADE,
    name         varchar(120) NOT NULL,
    slug         varchar(120) NOT NULL,
    UNIQUE (audience_id, slug)
);

CREATE TABLE contact_tags (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id  bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    tag_id      bigint NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (contact_id, tag_id)
);
CREATE INDEX contact_tags_tag_contact ON contact_tags (tag_id, contact_id);

CREATE TABLE email_templates (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id          bigint NOT NULL REFERENCES clients(id) ON DELETE RESTRICT,
    key                varchar(120) NOT NULL,
    name               varchar(255) NOT NULL,
    description        text NOT NULL DEFAULT '',
    subject            varchar(255) NOT NULL,
    html_body          text NOT NULL DEFAULT '',
    text_body          text NOT NULL DEFAULT '',
    required_context   jsonb NOT NULL DEFAULT '[]',
    example_context    jsonb NOT NULL DEFAULT '{}',
    default_sender_id  varchar(80) NOT NULL DEFAULT '',
    is_transactional   boolean NOT NULL DEFAULT true,
    is_active          boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client_id, key)
);
CREATE INDEX email_templates_client_kind ON email_templates (client_id, is_transactional, is_active);

CREATE TABLE transactional_messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id        bigint NOT NULL REFERENCES clients(id) ON DELETE RESTRICT,
    contact_id       bigint NOT NULL REFERENCES contacts(id) ON DELETE RESTRICT,
    template_id      bigint NOT NULL REFERENCES email_templates(id) ON DELETE RESTRICT,
    email            varchar(320) NOT NULL,
    from_email_id    varchar(80) NOT NULL DEFAULT '',
    from_email       varchar(320) NOT NULL DEFAULT '',
    template_key     varchar(120) NOT NULL,
    status           varchar(20) NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'skipped', 'bounced', 'complained')),
    idempotency_key  varchar(255) NOT NULL DEFAULT '',
    -- Rendered subject: text, checked by the API (the original's varchar(255) overflowed, facts §1.5 [GAP]).
    subject          text NOT NULL,
    html_body        text NOT NULL DEFAULT '',
    text_body        text NOT NULL DEFAULT '',
    context          jsonb NOT NULL DEFAULT '{}',
    metadata         jsonb NOT NULL DEFAULT '{}',
    ses_message_id   varchar(255) NOT NULL DEFAULT '',
    sent_at          timestamptz,
    delivered_at     timestamptz,
    first_opened_at  timestamptz,
    first_clicked_at timestamptz,
    open_count       integer NOT NULL DEFAULT 0,
    click_count      integer NOT NULL DEFAULT 0,
    last_error       text NOT NULL DEFAULT '',
    -- Claim bookkeeping: a `sending` row belongs to one delivery until lease_expires_at.
    -- Past it, the row is reconciled (did SES accept it?) before it may be sent again.
    lease_expires_at timestamptz,
    send_attempts    integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX transactional_messages_idempotency ON transactional_messages (client_id, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX transactional_messages_contact_created ON transactional_messages (contact_id, created_at);
CREATE INDEX transactional_messages_client_status ON transactional_messages (client_id, status, created_at);
CREATE INDEX transactional_messages_ses_id ON transactional_messages (ses_message_id) WHERE ses_message_id <> '';
CREATE INDEX transactional_messages_stale ON transactional_messages (status, updated_at) WHERE status IN ('queued', 'sending');

CREATE TABLE campaigns (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id           bigint NOT NULL REFERENCES clients(id) ON DELETE RESTRICT,
    audience_id         bigint NOT NULL REFERENCES audiences(id) ON DELETE RESTRICT,
    external_key        varchar(180) NOT NULL DEFAULT '',
    subject             varchar(255) NOT NULL,
    preview_text        varchar(255) NOT NULL DEFAULT '',
    html_body           text NOT NULL DEFAULT '',
    text_body           text NOT NULL DEFAULT '',
    status              varchar(20) NOT NULL DEFAULT 'draft'
                        CHECK (status IN ('draft', 'queued', 'snapshotting', 'sending', 'sent', 'cancelled', 'failed')),
    scheduled_at        timestamptz,
    sent_at             timestamptz,
    sending_started_at  timestamptz,
    category_tag        varchar(80) NOT NULL DEFAULT '',
    recipient_list_key  varchar(255) NOT NULL DEFAULT '',
    include_tags        jsonb NOT NULL DEFAULT '[]',
    exclude_tags        jsonb NOT NULL DEFAULT '[]',
    metadata            jsonb NOT NULL DEFAULT '{}',
    recipient_count     integer NOT NULL DEFAULT 0,
    sent_count          integer NOT NULL DEFAULT 0,
    skipped_count       integer NOT NULL DEFAULT 0,
    failed_count        integer NOT NULL DEFAULT 0,
    delivered_count     integer NOT NULL DEFAULT 0,
    unique_open_count   integer NOT NULL DEFAULT 0,
    open_count          integer NOT NULL DEFAULT 0,
    unique_click_count  integer NOT NULL DEFAULT 0,
    click_count         integer NOT NULL DEFAULT 0,
    unsubscribe_count   integer NOT NULL DEFAULT 0,
    bounce_count        integer NOT NULL DEFAULT 0,
    complaint_count     integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX campaigns_external_key ON campaigns (client_id, external_key) WHERE external_key <> '';
CREATE INDEX campaigns_scope_status ON campaigns (client_id, audience_id, status);
CREATE INDEX campaigns_scheduled_at ON campaigns (scheduled_at);

CREATE TABLE campaign_recipients (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id             bigint NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    contact_id              bigint NOT NULL REFERENCES contacts(id) ON DELETE RESTRICT,
    email                   varchar(320) NOT NULL,
    status                  varchar(20) NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'sending', 'sent', 'skipped', 'failed', 'bounced', 'complained', 'unsubscribed')),
    skip_reason             varchar(30) NOT NULL DEFAULT '',
    tracking_token_hash     varchar(255) UNIQUE,
    unsubscribe_token_hash  varchar(255) UNIQUE,
    ses_message_id          varchar(255) NOT NULL DEFAULT '',
    sent_at                 timestamptz,
    delivered_at            timestamptz,
    first_opened_at         timestamptz,
    first_clicked_at        timestamptz,
    open_count              integer NOT NULL DEFAULT 0,
    click_count             integer NOT NULL DEFAULT 0,
    last_error              text NOT NULL DEFAULT '',
    lease_expires_at        timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, contact_id)
);
CREATE INDEX campaign_recipients_campaign_status ON campaign_recipients (campaign_id, status);
CREATE INDEX campaign_recipients_contact_sent ON campaign_recipients (contact_id, sent_at);
CREATE INDEX campaign_recipients_ses_id ON campaign_recipients (ses_message_id) WHERE ses_message_id <> '';
CREATE INDEX campaign_recipients_first_opened ON campaign_recipients (first_opened_at);
CREATE INDEX campaign_recipients_first_clicked ON campaign_recipients (first_clicked_at);

-- Append-only history. provider_event_id (the SNS MessageId) is unique when set: that is the
-- SES event dedupe.
CREATE TABLE email_events (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id               bigint REFERENCES campaigns(id) ON DELETE CASCADE,
    campaign_recipient_id     bigint REFERENCES campaign_recipients(id) ON DELETE CASCADE,
    transactional_message_id  bigint REFERENCES transactional_messages(id) ON DELETE CASCADE,
    contact_id                bigint REFERENCES contacts(id) ON DELETE RESTRICT,
    client_id                 bigint REFERENCES clients(id) ON DELETE RESTRICT,
    audience_id               bigint REFERENCES audiences(id) ON DELETE RESTRICT,
    event_type                varchar(20) NOT NULL
                              CHECK (event_type IN ('queued', 'skipped', 'sent', 'delivered', 'open', 'click',
                                                    'subscribe', 'unsubscribe', 'bounce', 'complaint', 'failed')),
    provider_event_id         varchar(255) NOT NULL DEFAULT '',
    url                       varchar(2048) NOT NULL DEFAULT '',
    metadata                  jsonb NOT NULL DEFAULT '{}',
    created_at                timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX email_events_provider_event_id ON email_events (provider_event_id) WHERE provider_event_id <> '';
CREATE INDEX email_events_contact_created ON email_events (contact_id, created_at);
CREATE INDEX email_events_campaign_type ON email_events (campaign_id, event_type, created_at);
CREATE INDEX email_events_recipient_type ON email_events (campaign_recipient_id, event_type);
CREATE INDEX email_events_transactional ON email_events (transactional_message_id);
CREATE INDEX email_events_client_created ON email_events (client_id, created_at);

-- The embedded queue: SQS semantics on Postgres (visibility timeout, receive count,
-- dead-lettering with a reason). A dead-lettered row stays here with dead_lettered_at set.
CREATE TABLE queue_messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue               varchar(40) NOT NULL,
    body                text NOT NULL,
    enqueued_at         timestamptz NOT NULL DEFAULT now(),
    visible_at          timestamptz NOT NULL DEFAULT now(),
    receive_count       integer NOT NULL DEFAULT 0,
    first_received_at   timestamptz,
    last_error          text NOT NULL DEFAULT '',
    dead_lettered_at    timestamptz,
    dead_letter_reason  text NOT NULL DEFAULT ''
);
CREATE INDEX queue_messages_ready ON queue_messages (queue, visible_at, id) WHERE dead_lettered_at IS NULL;
CREATE INDEX queue_messages_dead ON queue_messages (queue, dead_lettered_at) WHERE dead_lettered_at IS NOT NULL;

-- The capture mailer's outbox: what would have gone to SES, kept whole.
CREATE TABLE captured_messages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_message_id varchar(255) NOT NULL UNIQUE,
    from_email        varchar(320) NOT NULL,
    to_addresses      jsonb NOT NULL DEFAULT '[]',
    cc_addresses      jsonb NOT NULL DEFAULT '[]',
    bcc_addresses     jsonb NOT NULL DEFAULT '[]',
    reply_to          jsonb NOT NULL DEFAULT '[]',
    subject           text NOT NULL,
    text_body         text NOT NULL DEFAULT '',
    html_body         text NOT NULL DEFAULT '',
    headers           jsonb NOT NULL DEFAULT '{}',
    tags              jsonb NOT NULL DEFAULT '{}',
    configuration_set varchar(255) NOT NULL DEFAULT '',
    raw_mime          text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
