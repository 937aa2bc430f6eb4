-- Recovery that holds without an operator (docs/architecture.md, "Recovery").
--
-- Fencing: every receive of an embedded-queue message bumps its receipt, and settling matches
-- it, so a consumer whose visibility ran out cannot settle the current holder's message. (A
-- transactional row's claim is fenced the same way by `send_attempts`, which every claim
-- bumps.)
ALTER TABLE queue_messages ADD COLUMN receipt bigint NOT NULL DEFAULT 0;

-- The maintainer lease: one maintainer acts at a time across processes and Lambda
-- environments; it expires by itself when its holder dies.
CREATE TABLE maintenance_lease (
    name         text PRIMARY KEY,
    holder       text NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- When each maintenance task last ran and how it went (what is due is decided from this).
CREATE TABLE maintenance_runs (
    task              text PRIMARY KEY,
    holder            text NOT NULL DEFAULT '',
    last_started_at   timestamptz,
    last_finished_at  timestamptz,
    last_success_at   timestamptz,
    last_ok           boolean,
    last_detail       text NOT NULL DEFAULT '',
    last_acted_on     bigint NOT NULL DEFAULT 0,
    runs_total        bigint NOT NULL DEFAULT 0,
    failures_total    bigint NOT NULL DEFAULT 0
);

-- The send ledger: the provider's word that it accepted a send for a row, written by the
-- capture mailer with each message and by SES `Send` events (our tags name the row).
CREATE TABLE send_ledger (
    kind                 text NOT NULL,
    row_id               bigint NOT NULL,
    provider_message_id  text NOT NULL,
    accepted_at          timestamptz NOT NULL,
    source               text NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, row_id)
);
