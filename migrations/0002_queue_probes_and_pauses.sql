-- Operational control of the queue runtime (docs/operations.md).
--
-- queue_probes: one row per smoke-test probe a queue's worker consumed. The runtime recognises
-- the `datamailer-probe` contract before any handler runs, acknowledges the message and records
-- it here; `GET /health/probes/{probe_id}` reads it back. A probe is never emailed and never
-- dead-lettered.
CREATE TABLE queue_probes (
    probe_id     text PRIMARY KEY,
    queue        text NOT NULL,
    sent_at      timestamptz,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- queue_pauses: a row means "this queue's workers take nothing new" (`datamailer pause`);
-- deleting it resumes (`datamailer resume`). Pollers re-check every few seconds; Lambda
-- invocations of a paused queue hand every record back.
CREATE TABLE queue_pauses (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    reason     text NOT NULL DEFAULT ''
);
