-- One definition of an open or click of a campaign recipient, for both paths: the tracking
-- endpoints apply it at once, or (DATAMAILER_TRACKING_ASYNC) enqueue an `email-events` message
-- that the email-events tree applies in batches. It locks the recipient's row, so concurrent
-- hits count one first open; `p_key` (the message's idempotency key, '' for the direct path)
-- lands in the event's provider_event_id, whose unique index makes a redelivered message
-- count nothing twice. A machine's hit (a HEAD request, or within 3 s of the send) writes its
-- event flagged and moves no counter. Returns whether the recipient exists.
CREATE FUNCTION campaign_engage(p_recipient bigint, p_kind text, p_head boolean, p_url text,
                                p_at timestamptz, p_key text)
RETURNS boolean LANGUAGE sql VOLATILE AS $$
    WITH r AS (
        SELECT cr.id, cr.campaign_id, cr.contact_id, c.client_id, c.audience_id,
               cr.first_opened_at IS NULL AS first_open, cr.first_clicked_at IS NULL AS first_click,
               CASE WHEN p_head THEN 'head_request'
                    WHEN cr.sent_at IS NOT NULL AND cr.sent_at > p_at - interval '3 seconds'
                        THEN 'within_seconds_of_send'
                    ELSE '' END AS machine
          FROM campaign_recipients cr JOIN campaigns c ON c.id = cr.campaign_id
         WHERE cr.id = p_recipient
           FOR UPDATE OF cr
    ),
    event AS (
        INSERT INTO email_events (campaign_id, campaign_recipient_id, contact_id, client_id,
                                  audience_id, event_type, url, provider_event_id, metadata, created_at)
        SELECT campaign_id, id, contact_id, client_id, audience_id, p_kind, p_url, p_key,
               CASE WHEN machine <> '' THEN jsonb_build_object('machine', true, 'why', machine)
                    ELSE '{}'::jsonb END,
               p_at
          FROM r
        ON CONFLICT (provider_event_id) WHERE provider_event_id <> '' DO NOTHING
        RETURNING 1
    ),
    counted AS (
        UPDATE campaign_recipients cr
           SET open_count = cr.open_count + CASE WHEN p_kind = 'open' THEN 1 ELSE 0 END,
               first_opened_at = CASE WHEN p_kind = 'open' THEN coalesce(cr.first_opened_at, p_at)
                                      ELSE cr.first_opened_at END,
               click_count = cr.click_count + CASE WHEN p_kind = 'click' THEN 1 ELSE 0 END,
               first_clicked_at = CASE WHEN p_kind = 'click' THEN coalesce(cr.first_clicked_at, p_at)
                                       ELSE cr.first_clicked_at END,
               updated_at = now()
          FROM r
         WHERE cr.id = r.id AND r.machine = '' AND EXISTS (SELECT 1 FROM event)
        RETURNING 1
    ),
    campaign AS (
        UPDATE campaigns c
           SET open_count = c.open_count + CASE WHEN p_kind = 'open' THEN 1 ELSE 0 END,
               unique_open_count = c.unique_open_count
                   + CASE WHEN p_kind = 'open' AND r.first_open THEN 1 ELSE 0 END,
               click_count = c.click_count + CASE WHEN p_kind = 'click' THEN 1 ELSE 0 END,
               unique_click_count = c.unique_click_count
                   + CASE WHEN p_kind = 'click' AND r.first_click THEN 1 ELSE 0 END,
               updated_at = now()
          FROM r
         WHERE c.id = r.campaign_id AND r.machine = '' AND EXISTS (SELECT 1 FROM event)
        RETURNING 1
    )
    -- (Postgres runs every data-modifying CTE once, read or not.)
    SELECT EXISTS (SELECT 1 FROM r)
$$;
