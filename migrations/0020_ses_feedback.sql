-- The SES feedback loop (issue 11): what SES says about a message after we sent it, applied by
-- the ses-webhooks tree (actors/src/ses_webhooks.rs) in one call per batch.

-- Every type a configuration set publishes is recorded, and an event no one understands is
-- kept as `unknown` with its reason rather than lost.
ALTER TABLE email_events DROP CONSTRAINT email_events_event_type_check;
ALTER TABLE email_events ADD CONSTRAINT email_events_event_type_check
    CHECK (event_type IN ('queued', 'skipped', 'sent', 'delivered', 'open', 'click', 'subscribe',
                          'unsubscribe', 'bounce', 'complaint', 'failed', 'delivery_delay',
                          'rendering_failure', 'subscription', 'unknown'));

-- When a message hard-bounced or drew a complaint. Counters move only when these go from NULL
-- to a time, so duplicates and reordering never count twice; the status follows from them
-- (complained over bounced) whatever order the events came in.
ALTER TABLE campaign_recipients ADD COLUMN bounced_at timestamptz, ADD COLUMN complained_at timestamptz;
ALTER TABLE transactional_messages ADD COLUMN bounced_at timestamptz, ADD COLUMN complained_at timestamptz;

-- (The repeated-soft-bounce rule reads one contact's events through
-- email_events_contact_created: a contact has few, and every write here costs.)

-- A soft or undetermined bounce is not `contact.hard_bounced` for the client's webhook (the
-- original sent that callback for every bounce event), unless it suppressed the contact (the
-- repeated-soft-bounce rule).
DROP TRIGGER email_events_client_webhook ON email_events;
CREATE TRIGGER email_events_client_webhook
    AFTER INSERT ON email_events
    FOR EACH ROW
    WHEN (NEW.contact_id IS NOT NULL
          AND NEW.event_type IN ('subscribe', 'unsubscribe', 'bounce', 'complaint', 'delivered',
                                 'open', 'click', 'skipped', 'failed')
          AND NOT (NEW.event_type = 'bounce'
                   AND coalesce(NEW.metadata ->> 'bounce_class', 'hard') <> 'hard'
                   AND NOT NEW.metadata ? 'suppressed'))
    EXECUTE FUNCTION email_events_client_webhook();

-- The account-wide reputation guard (runtime maintenance task `reputation`): tripped when the
-- rolling bounce or complaint rate of the last N sends crosses its threshold. While tripped,
-- campaigns do not send (transactional mail does); `datamailer reputation resume` clears it
-- and counts sends only from then on (`counted_after`), so the old bounces do not trip it again.
CREATE TABLE reputation_guard (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tripped_at     timestamptz,
    reason         text NOT NULL DEFAULT '',
    counted_after  bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO reputation_guard DEFAULT VALUES;

-- One batch of SES events, in event-time order per message. For each event:
--   correlate: our tags (kind, row id) first, else the SES message id when exactly one row
--   has it; the event is stored either way (uncorrelated: no foreign keys, no effect);
--   dedupe: the partial unique index on provider_event_id (a duplicate, even a concurrent one,
--   inserts nothing and changes nothing);
--   apply: send → ledger entry, and a row not yet recorded as sent is marked sent;
--   reject / rendering failure → failed; delivery → delivered_at; hard bounce → bounced and
--   the listed recipients suppressed; soft bounce → last_error, and `p_soft_limit` soft
--   bounces of the contact within `p_soft_window_secs` with no delivery since suppress it;
--   complaint → complained and the listed recipients suppressed; open / click → counts.
-- Campaign counters move once per batch and campaign, in id order (short lock, no deadlock
-- between batches), then a campaign whose bounce or complaint rate reached its threshold
-- after `p_min_sample` sends pauses itself. Returns one row per event (its ordinal and
-- `applied`, `uncorrelated` or `duplicate`) and one per campaign paused (ordinal 0).
CREATE FUNCTION ses_apply_events(
    p_ids text[], p_types text[], p_ses_ids text[], p_kinds text[], p_rows bigint[],
    p_at timestamptz[], p_urls text[], p_meta jsonb[], p_emails jsonb[], p_bounce text[],
    p_soft_limit int, p_soft_window_secs float8,
    p_bounce_threshold float8, p_complaint_threshold float8, p_min_sample int)
RETURNS TABLE (n bigint, outcome text, campaign_id bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    e            record;
    v_recipient  bigint;
    v_message    bigint;
    v_campaign   bigint;
    v_contact    bigint;
    v_client     bigint;
    v_audience   bigint;
    v_status     text;
    v_delivered  timestamptz;
    v_bounced    timestamptz;
    v_complained timestamptz;
    v_opened     timestamptz;
    v_clicked    timestamptz;
    v_row_email  text;
    v_self       boolean;
    v_event      bigint;
    v_found      bigint[];
    v_other      bigint[];
    v_emails     text[];
    v_meta       jsonb;
    -- Per-campaign counter deltas, parallel to v_cids.
    v_cids       bigint[] := '{}';
    d_sent       int[] := '{}';
    d_failed     int[] := '{}';
    d_delivered  int[] := '{}';
    d_bounce     int[] := '{}';
    d_complaint  int[] := '{}';
    d_open       int[] := '{}';
    d_uopen      int[] := '{}';
    d_click      int[] := '{}';
    d_uclick     int[] := '{}';
    i            int;
BEGIN
    FOR e IN
        SELECT x.* FROM unnest(p_ids, p_types, p_ses_ids, p_kinds, p_rows, p_at, p_urls, p_meta,
                               p_emails, p_bounce)
                        WITH ORDINALITY AS x(id, type, ses_id, kind, row_id, at, url, meta, emails,
                                             bounce, ord)
         ORDER BY x.kind, x.row_id, x.ses_id, x.at, x.ord
    LOOP
        v_recipient := NULL; v_message := NULL; v_campaign := NULL; v_contact := NULL;
        v_client := NULL; v_audience := NULL; v_status := NULL;

        -- Correlate: our tags, else the one row that has this SES message id.
        IF e.kind = 'campaign' AND e.row_id IS NOT NULL THEN
            v_recipient := e.row_id;
        ELSIF e.kind = 'transactional' AND e.row_id IS NOT NULL THEN
            v_message := e.row_id;
        ELSIF e.ses_id <> '' THEN
            SELECT array_agg(r.id) INTO v_found
              FROM (SELECT cr.id FROM campaign_recipients cr WHERE cr.ses_message_id = e.ses_id LIMIT 2) r;
            SELECT array_agg(m.id) INTO v_other
              FROM (SELECT tm.id FROM transactional_messages tm WHERE tm.ses_message_id = e.ses_id LIMIT 2) m;
            IF cardinality(v_found) = 1 AND v_other IS NULL THEN
                v_recipient := v_found[1];
            ELSIF cardinality(v_other) = 1 AND v_found IS NULL THEN
                v_message := v_other[1];
            END IF;
        END IF;
        IF v_recipient IS NOT NULL THEN
            SELECT cr.id, cr.campaign_id, cr.contact_id, c.client_id, c.audience_id, cr.status,
                   cr.delivered_at, cr.bounced_at, cr.complained_at,
                   cr.first_opened_at, cr.first_clicked_at, ct.normalized_email
              INTO v_recipient, v_campaign, v_contact, v_client, v_audience, v_status,
                   v_delivered, v_bounced, v_complained, v_opened, v_clicked, v_row_email
              FROM campaign_recipients cr JOIN campaigns c ON c.id = cr.campaign_id
              JOIN contacts ct ON ct.id = cr.contact_id
             WHERE cr.id = v_recipient
               FOR UPDATE OF cr;
        ELSIF v_message IS NOT NULL THEN
            SELECT m.id, m.contact_id, m.client_id, m.status, m.delivered_at,
                   m.bounced_at, m.complained_at, m.first_opened_at, m.first_clicked_at,
                   ct.normalized_email
              INTO v_message, v_contact, v_client, v_status, v_delivered, v_bounced,
                   v_complained, v_opened, v_clicked, v_row_email
              FROM transactional_messages m JOIN contacts ct ON ct.id = m.contact_id
             WHERE m.id = v_message
               FOR UPDATE OF m;
        END IF;

        -- Who the event names (normalized). A bounce or complaint changes the row only when
        -- it names the row's own recipient (or names no one); it suppresses whom it names
        -- (a cc'd address bouncing suppresses that address, not the primary contact).
        SELECT coalesce(array_agg(x), '{}') INTO v_emails FROM jsonb_array_elements_text(e.emails) x;
        v_self := coalesce(cardinality(v_emails) = 0 OR v_row_email = ANY (v_emails), false);

        -- The soft bounce that makes `p_soft_limit` of the contact's, inside the window and
        -- with no delivery since, suppresses it as a hard bounce would; its event says so
        -- (and so tells the client's webhook, as a hard bounce does).
        v_meta := e.meta;
        IF e.type = 'bounce' AND e.bounce = 'soft' AND v_self AND p_soft_limit > 0
           AND EXISTS (SELECT 1 FROM contacts ct WHERE ct.id = v_contact AND ct.hard_bounced_at IS NULL)
           AND 1 + (SELECT count(*) FROM email_events b
                     WHERE b.contact_id = v_contact AND b.event_type = 'bounce'
                       AND b.metadata ->> 'bounce_class' = 'soft'
                       AND b.created_at <= e.at
                       AND b.created_at > e.at - make_interval(secs => p_soft_window_secs)
                       AND b.created_at > coalesce(
                           (SELECT max(d.created_at) FROM email_events d
                             WHERE d.contact_id = v_contact AND d.event_type = 'delivered'
                               AND d.created_at <= e.at), '-infinity')) >= p_soft_limit THEN
            v_meta := v_meta || jsonb_build_object('suppressed', 'soft_bounce_limit');
        END IF;

        -- The history, deduplicated by the provider's event id.
        v_event := NULL;
        INSERT INTO email_events (campaign_id, campaign_recipient_id, transactional_message_id,
                                  contact_id, client_id, audience_id, event_type,
                                  provider_event_id, url, metadata, created_at)
        VALUES (v_campaign, v_recipient, v_message, v_contact, v_client, v_audience, e.type,
                e.id, e.url, v_meta, e.at)
        ON CONFLICT (provider_event_id) WHERE provider_event_id <> '' DO NOTHING
        RETURNING id INTO v_event;
        IF v_event IS NULL THEN
            n := e.ord; outcome := 'duplicate'; campaign_id := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- The provider's word that it accepted a send, whether or not the row is ours.
        IF e.type = 'sent' AND e.row_id IS NOT NULL AND e.kind IN ('campaign', 'transactional') THEN
            INSERT INTO send_ledger (kind, row_id, provider_message_id, accepted_at, source)
            VALUES (e.kind, e.row_id, e.ses_id, e.at, 'ses-send-event')
            ON CONFLICT (kind, row_id) DO NOTHING;
        END IF;

        IF v_contact IS NULL THEN
            n := e.ord; outcome := 'uncorrelated'; campaign_id := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF v_campaign IS NOT NULL THEN
            i := array_position(v_cids, v_campaign);
            IF i IS NULL THEN
                v_cids := v_cids || v_campaign;
                d_sent := d_sent || 0; d_failed := d_failed || 0; d_delivered := d_delivered || 0;
                d_bounce := d_bounce || 0; d_complaint := d_complaint || 0; d_open := d_open || 0;
                d_uopen := d_uopen || 0; d_click := d_click || 0; d_uclick := d_uclick || 0;
                i := cardinality(v_cids);
            END IF;
        END IF;
        CASE e.type
        WHEN 'sent' THEN
            -- Reconciliation: SES accepted the row but its record is not (yet) written: the
            -- worker died between the two, or took a timeout for a failure. The worker's own
            -- record is fenced on `sending` and its claim, so it cannot count the row again,
            -- and a later claim or reclaim finds nothing left to send.
            IF v_status IN ('sending', 'queued', 'pending') THEN
                IF v_recipient IS NOT NULL THEN
                    UPDATE campaign_recipients
                       SET status = 'sent', ses_message_id = e.ses_id, sent_at = e.at,
                           lease_expires_at = NULL, last_error = '', updated_at = now()
                     WHERE id = v_recipient;
                    d_sent[i] := d_sent[i] + 1;
                ELSE
                    UPDATE transactional_messages
                       SET status = 'sent', ses_message_id = e.ses_id, sent_at = e.at,
                           lease_expires_at = NULL, last_error = '', updated_at = now()
                     WHERE id = v_message;
                END IF;
            END IF;
        WHEN 'failed', 'rendering_failure' THEN
            IF v_status = 'sent' THEN
                IF v_recipient IS NOT NULL THEN
                    UPDATE campaign_recipients
                       SET status = 'failed', last_error = left(coalesce(e.meta ->> 'reason', 'ses_reject'), 2000),
                           updated_at = now()
                     WHERE id = v_recipient;
                    d_sent[i] := d_sent[i] - 1;
                    d_failed[i] := d_failed[i] + 1;
                ELSE
                    UPDATE transactional_messages
                       SET status = 'failed', last_error = left(coalesce(e.meta ->> 'reason', 'ses_reject'), 2000),
                           updated_at = now()
                     WHERE id = v_message;
                END IF;
            END IF;
        WHEN 'delivered' THEN
            IF v_delivered IS NULL THEN
                IF v_recipient IS NOT NULL THEN
                    UPDATE campaign_recipients SET delivered_at = e.at, updated_at = now() WHERE id = v_recipient;
                    d_delivered[i] := d_delivered[i] + 1;
                ELSE
                    UPDATE transactional_messages SET delivered_at = e.at, updated_at = now() WHERE id = v_message;
                END IF;
            END IF;
        WHEN 'bounce' THEN
            IF e.bounce = 'hard' THEN
                IF v_bounced IS NULL AND v_self THEN
                    IF v_recipient IS NOT NULL THEN
                        UPDATE campaign_recipients
                           SET bounced_at = e.at, updated_at = now(),
                               status = CASE WHEN complained_at IS NOT NULL THEN 'complained' ELSE 'bounced' END
                         WHERE id = v_recipient;
                        d_bounce[i] := d_bounce[i] + 1;
                    ELSE
                        UPDATE transactional_messages
                           SET bounced_at = e.at, updated_at = now(),
                               status = CASE WHEN complained_at IS NOT NULL THEN 'complained' ELSE 'bounced' END
                         WHERE id = v_message;
                    END IF;
                END IF;
                UPDATE contacts
                   SET hard_bounced_at = e.at, updated_at = now()
                 WHERE hard_bounced_at IS NULL
                   AND (normalized_email = ANY (v_emails) OR (cardinality(v_emails) = 0 AND id = v_contact));
            ELSIF e.bounce = 'soft' AND v_self THEN
                IF v_recipient IS NOT NULL THEN
                    UPDATE campaign_recipients SET last_error = 'soft_bounce', updated_at = now() WHERE id = v_recipient;
                ELSE
                    UPDATE transactional_messages SET last_error = 'soft_bounce', updated_at = now() WHERE id = v_message;
                END IF;
                IF v_meta ? 'suppressed' THEN
                    UPDATE contacts SET hard_bounced_at = e.at, updated_at = now()
                     WHERE id = v_contact AND hard_bounced_at IS NULL;
                END IF;
            END IF;
        WHEN 'complaint' THEN
            IF v_complained IS NULL AND v_self THEN
                IF v_recipient IS NOT NULL THEN
                    UPDATE campaign_recipients
                       SET complained_at = e.at, status = 'complained', updated_at = now()
                     WHERE id = v_recipient;
                    d_complaint[i] := d_complaint[i] + 1;
                ELSE
                    UPDATE transactional_messages
                       SET complained_at = e.at, status = 'complained', updated_at = now()
                     WHERE id = v_message;
                END IF;
            END IF;
            UPDATE contacts
               SET complained_at = e.at, updated_at = now()
             WHERE complained_at IS NULL
               AND (normalized_email = ANY (v_emails) OR (cardinality(v_emails) = 0 AND id = v_contact));
        WHEN 'open' THEN
            IF v_recipient IS NOT NULL THEN
                UPDATE campaign_recipients
                   SET open_count = open_count + 1, first_opened_at = coalesce(first_opened_at, e.at),
                       updated_at = now()
                 WHERE id = v_recipient;
                d_open[i] := d_open[i] + 1;
                IF v_opened IS NULL THEN d_uopen[i] := d_uopen[i] + 1; END IF;
            ELSE
                UPDATE transactional_messages
                   SET open_count = open_count + 1, first_opened_at = coalesce(first_opened_at, e.at),
                       updated_at = now()
                 WHERE id = v_message;
            END IF;
        WHEN 'click' THEN
            IF v_recipient IS NOT NULL THEN
                UPDATE campaign_recipients
                   SET click_count = click_count + 1, first_clicked_at = coalesce(first_clicked_at, e.at),
                       updated_at = now()
                 WHERE id = v_recipient;
                d_click[i] := d_click[i] + 1;
                IF v_clicked IS NULL THEN d_uclick[i] := d_uclick[i] + 1; END IF;
            ELSE
                UPDATE transactional_messages
                   SET click_count = click_count + 1, first_clicked_at = coalesce(first_clicked_at, e.at),
                       updated_at = now()
                 WHERE id = v_message;
            END IF;
        ELSE
            NULL; -- delivery_delay, subscription, unknown: the history only.
        END CASE;
        n := e.ord; outcome := 'applied'; campaign_id := v_campaign;
        RETURN NEXT;
    END LOOP;

    -- Counters, one short update per campaign in id order.
    FOR i IN SELECT o.k FROM unnest(v_cids) WITH ORDINALITY AS o(id, k) ORDER BY o.id LOOP
        UPDATE campaigns c
           SET sent_count = c.sent_count + d_sent[i], failed_count = c.failed_count + d_failed[i],
               delivered_count = c.delivered_count + d_delivered[i],
               bounce_count = c.bounce_count + d_bounce[i],
               complaint_count = c.complaint_count + d_complaint[i],
               open_count = c.open_count + d_open[i], unique_open_count = c.unique_open_count + d_uopen[i],
               click_count = c.click_count + d_click[i], unique_click_count = c.unique_click_count + d_uclick[i],
               updated_at = now()
         WHERE c.id = v_cids[i];
    END LOOP;

    -- The reputation guard of each campaign touched: explicit resume only.
    RETURN QUERY
    UPDATE campaigns c
       SET paused_at = now(), updated_at = now(),
           pause_reason = CASE
               WHEN c.complaint_count::float8 / c.sent_count >= p_complaint_threshold
                   THEN format('complaint_rate: %s complaints of %s sent (%s%%) reached the threshold of %s%%',
                               c.complaint_count, c.sent_count,
                               round((100.0 * c.complaint_count / c.sent_count)::numeric, 3),
                               round((100 * p_complaint_threshold)::numeric, 3))
               ELSE format('bounce_rate: %s hard bounces of %s sent (%s%%) reached the threshold of %s%%',
                           c.bounce_count, c.sent_count,
                           round((100.0 * c.bounce_count / c.sent_count)::numeric, 3),
                           round((100 * p_bounce_threshold)::numeric, 3))
           END
     WHERE c.id = ANY (v_cids) AND c.status = 'sending' AND c.paused_at IS NULL
       AND c.sent_count >= greatest(p_min_sample, 1)
       AND (c.bounce_count::float8 / c.sent_count >= p_bounce_threshold
            OR c.complaint_count::float8 / c.sent_count >= p_complaint_threshold)
    RETURNING 0::bigint, c.pause_reason, c.id;
END
$$;
