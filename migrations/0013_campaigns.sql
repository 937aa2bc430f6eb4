-- Campaigns that actually run (facts §1.4, §3.4, §3.6 with their gaps fixed): every status
-- transition timestamped, pause with its reason, the client's sender, and recipient claims
-- fenced by an attempt counter, as transactional messages are.

ALTER TABLE campaigns
    ADD COLUMN from_sender_id        varchar(80) NOT NULL DEFAULT '',
    ADD COLUMN queued_at             timestamptz,
    ADD COLUMN snapshot_started_at   timestamptz,
    ADD COLUMN snapshot_finished_at  timestamptz,
    ADD COLUMN cancelled_at          timestamptz,
    ADD COLUMN failed_at             timestamptz,
    ADD COLUMN failure_reason        text NOT NULL DEFAULT '',
    -- A paused campaign sends nothing new until resumed; the reason says who paused it.
    ADD COLUMN paused_at             timestamptz,
    ADD COLUMN pause_reason          text NOT NULL DEFAULT '',
    -- Batches handed to the queue so far: numbers the next batch ids.
    ADD COLUMN batch_count           integer NOT NULL DEFAULT 0;

ALTER TABLE campaign_recipients
    -- Bumped by every claim: the fence that lets only the current holder record the result.
    ADD COLUMN send_attempts  integer NOT NULL DEFAULT 0,
    -- When the row was last put in a queued batch: pending rows whose batch is older than the
    -- horizon are batched again (a lost message loses no recipient).
    ADD COLUMN batched_at     timestamptz;

CREATE INDEX campaign_recipients_pending ON campaign_recipients (campaign_id, id)
    WHERE status IN ('pending', 'sending');
CREATE INDEX campaigns_active ON campaigns (status, scheduled_at)
    WHERE status IN ('queued', 'snapshotting', 'sending');

-- The signing keys of tracking and unsubscribe tokens. The newest key signs; older keys still
-- verify (rotation: insert a key with the next id). Read once by each process.
CREATE TABLE tracking_keys (
    id          smallint PRIMARY KEY CHECK (id BETWEEN 0 AND 255),
    secret      bytea NOT NULL CHECK (length(secret) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tracking_keys (id, secret)
VALUES (1, decode(replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''), 'hex'));

-- Who a campaign reaches, and why each candidate is skipped (facts §3.4, rules in order; ''
-- means sendable). One definition for the snapshot (actors) and the estimate (web).
CREATE FUNCTION campaign_candidates(p_campaign bigint)
RETURNS TABLE (contact_id bigint, email text, normalized_email text, skip_reason text)
LANGUAGE sql STABLE AS $$
    WITH c AS (SELECT * FROM campaigns WHERE id = p_campaign),
    base AS (
        SELECT m.contact_id
          FROM c
          JOIN recipient_lists l ON l.client_id = c.client_id AND l.audience_id = c.audience_id
                                AND l.key = c.recipient_list_key
          JOIN recipient_list_members m ON m.recipient_list_id = l.id AND m.active
         WHERE c.recipient_list_key <> ''
        UNION
        SELECT s.contact_id
          FROM c
          JOIN subscriptions s ON s.audience_id = c.audience_id
                              AND (s.client_id = c.client_id OR s.client_id IS NULL)
         WHERE c.recipient_list_key = ''
    ),
    include_tags AS (
        SELECT t.id FROM c CROSS JOIN LATERAL jsonb_array_elements_text(c.include_tags) AS want(slug)
          LEFT JOIN tags t ON t.slug = want.slug AND t.audience_id = c.audience_id
    ),
    exclude_tags AS (
        SELECT t.id FROM c CROSS JOIN LATERAL jsonb_array_elements_text(c.exclude_tags) AS want(slug)
          JOIN tags t ON t.slug = want.slug AND t.audience_id = c.audience_id
    )
    SELECT ct.id, ct.email::text, ct.normalized_email::text,
           CASE
               WHEN ct.hard_bounced_at IS NOT NULL THEN 'hard_bounce'
               WHEN ct.complained_at IS NOT NULL THEN 'complaint'
               WHEN ct.global_unsubscribed_at IS NOT NULL THEN 'global_unsubscribe'
               WHEN ct.email_validation_status IN ('invalid_syntax', 'no_mx', 'disposable', 'risky',
                                                   'manually_invalid') THEN 'invalid_email'
               WHEN ct.verified_at IS NULL AND aud.verified_at IS NULL AND cli.verified_at IS NULL
                   THEN 'unverified'
               WHEN aud.status = 'unsubscribed' THEN 'audience_unsubscribe'
               WHEN cli.status = 'unsubscribed' THEN 'client_unsubscribe'
               WHEN cli.status IS DISTINCT FROM 'subscribed' THEN 'suppressed'
               WHEN c.category_tag <> '' AND EXISTS (
                   SELECT 1 FROM category_preferences p
                    WHERE p.contact_id = ct.id AND p.audience_id = c.audience_id
                      AND p.client_id = c.client_id AND p.tag = c.category_tag AND NOT p.enabled)
                   THEN 'client_unsubscribe'
               ELSE ''
           END
      FROM c
      CROSS JOIN base b
      JOIN contacts ct ON ct.id = b.contact_id
      LEFT JOIN subscriptions aud ON aud.contact_id = ct.id AND aud.audience_id = c.audience_id
                                 AND aud.client_id IS NULL
      LEFT JOIN subscriptions cli ON cli.contact_id = ct.id AND cli.audience_id = c.audience_id
                                 AND cli.client_id = c.client_id
     WHERE NOT EXISTS (
               SELECT 1 FROM include_tags i
                WHERE i.id IS NULL
                   OR NOT EXISTS (SELECT 1 FROM contact_tags x WHERE x.contact_id = ct.id AND x.tag_id = i.id))
       AND NOT EXISTS (
               SELECT 1 FROM exclude_tags e
                 JOIN contact_tags x ON x.tag_id = e.id AND x.contact_id = ct.id)
$$;
