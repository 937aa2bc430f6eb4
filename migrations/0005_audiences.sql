-- The people side (facts §1.2, §1.3, §1.6): source metadata, recipient lists and their import
-- jobs, the client-webhook outbox (the original's cmp_callbacks) and the erase tombstones.

CREATE TABLE contact_source_metadata (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id   bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    audience_id  bigint NOT NULL REFERENCES audiences(id) ON DELETE CASCADE,
    client_id    bigint NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    source       varchar(80) NOT NULL,
    external_id  varchar(255) NOT NULL DEFAULT '',
    metadata     jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (contact_id, audience_id, client_id, source)
);
CREATE INDEX contact_source_metadata_external ON contact_source_metadata (source, external_id);
CREATE INDEX contact_source_metadata_scope ON contact_source_metadata (audience_id, client_id, source);

CREATE TABLE recipient_lists (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id            bigint NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    audience_id          bigint NOT NULL REFERENCES audiences(id) ON DELETE CASCADE,
    key                  varchar(255) NOT NULL,
    type                 varchar(40) NOT NULL DEFAULT 'custom'
                         CHECK (type IN ('registrants', 'homework_submitters', 'project_submitters', 'custom')),
    name                 varchar(255) NOT NULL DEFAULT '',
    metadata             jsonb NOT NULL DEFAULT '{}',
    member_count         integer NOT NULL DEFAULT 0,
    active_member_count  integer NOT NULL DEFAULT 0,
    last_reconciled_at   timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client_id, audience_id, key)
);
CREATE INDEX recipient_lists_scope_type ON recipient_lists (client_id, audience_id, type);

CREATE TABLE recipient_list_members (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_list_id  bigint NOT NULL REFERENCES recipient_lists(id) ON DELETE CASCADE,
    contact_id         bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    email              varchar(320) NOT NULL,
    source_object_key  varchar(255) NOT NULL,
    metadata           jsonb NOT NULL DEFAULT '{}',
    active             boolean NOT NULL DEFAULT true,
    removed_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (recipient_list_id, contact_id),
    UNIQUE (recipient_list_id, source_object_key)
);
CREATE INDEX recipient_list_members_active ON recipient_list_members (recipient_list_id, active);
CREATE INDEX recipient_list_members_contact ON recipient_list_members (contact_id);

-- Import jobs are worked like a queue (runtime/src/source/outbox.rs): `next_attempt_at` is
-- their visibility, `receipt` fences the worker holding one, `attempt_count` its tries.
CREATE TABLE recipient_list_import_jobs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id          bigint NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    audience_id        bigint NOT NULL REFERENCES audiences(id) ON DELETE CASCADE,
    recipient_list_id  bigint REFERENCES recipient_lists(id) ON DELETE SET NULL,
    list_key           varchar(255) NOT NULL,
    source_url         varchar(2048) NOT NULL,
    idempotency_key    varchar(255) NOT NULL DEFAULT '',
    status             varchar(20) NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'processing', 'succeeded', 'failed')),
    list_defaults      jsonb NOT NULL DEFAULT '{}',
    remove_absent      boolean NOT NULL DEFAULT false,
    row_count          integer NOT NULL DEFAULT 0,
    created_count      integer NOT NULL DEFAULT 0,
    updated_count      integer NOT NULL DEFAULT 0,
    removed_count      integer NOT NULL DEFAULT 0,
    failed_count       integer NOT NULL DEFAULT 0,
    failed_rows        jsonb NOT NULL DEFAULT '[]',
    content_sha256     varchar(64) NOT NULL DEFAULT '',
    error              text NOT NULL DEFAULT '',
    started_at         timestamptz,
    completed_at       timestamptz,
    attempt_count      integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    receipt            bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX recipient_list_import_jobs_idempotency ON recipient_list_import_jobs (client_id, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX recipient_list_import_jobs_scope_status ON recipient_list_import_jobs (client_id, audience_id, status);
CREATE INDEX recipient_list_import_jobs_key_created ON recipient_list_import_jobs (list_key, created_at);
CREATE INDEX recipient_list_import_jobs_due ON recipient_list_import_jobs (next_attempt_at) WHERE status IN ('pending', 'processing');

-- The client-webhook outbox (the original's cmp_callbacks). Rows are created by a trigger on
-- email_events, so a callback commits with its event or not at all, whoever writes the event.
CREATE TABLE cmp_callbacks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email_event_id   bigint NOT NULL UNIQUE REFERENCES email_events(id) ON DELETE CASCADE,
    contact_id       bigint REFERENCES contacts(id) ON DELETE RESTRICT,
    client_id        bigint REFERENCES clients(id) ON DELETE RESTRICT,
    audience_id      bigint REFERENCES audiences(id) ON DELETE RESTRICT,
    event_id         varchar(120) NOT NULL UNIQUE,
    event_type       varchar(80) NOT NULL,
    callback_url     varchar(2048) NOT NULL,
    payload          jsonb NOT NULL,
    status           varchar(20) NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempt_count    integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 8,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    response_status  integer,
    last_error       text NOT NULL DEFAULT '',
    receipt          bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cmp_callbacks_due ON cmp_callbacks (next_attempt_at) WHERE status = 'pending';
CREATE INDEX cmp_callbacks_client_status ON cmp_callbacks (client_id, status, created_at);

-- Erasing a contact keeps only this: a keyed hash (HMAC-SHA256 under the server's secret) of
-- the normalized address and the suppressions it had, so the address cannot become sendable
-- again by being re-added. Contact upserts and sends consult it.
CREATE TABLE suppression_tombstones (
    email_hash              bytea PRIMARY KEY,
    hard_bounced_at         timestamptz,
    complained_at           timestamptz,
    global_unsubscribed_at  timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now()
);
