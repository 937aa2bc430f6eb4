-- Client webhooks (the original's CMP callbacks, facts §1.6, §3.9): the callback row is made
-- by a trigger on email_events, so it commits with its event or not at all, whichever code
-- writes the event (the original created it after commit and could lose it).

-- The global fallback (the original's CMP_WEBHOOK_URL / CMP_WEBHOOK_TOKEN). The trigger runs
-- inside Postgres and cannot read a process's environment, so the web-serving processes
-- (`datamailer web`, `datamailer serve`) copy the two variables here at start: set → this one
-- row, unset → no row. The dispatcher reads it too, so every process agrees.
CREATE TABLE client_webhook_fallback (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    url         varchar(2048) NOT NULL,
    token       varchar(255) NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Which callback an event makes (core/src/webhooks.rs `callback_event_type` is the same map).
CREATE FUNCTION client_webhook_event_type(event_type text, transactional boolean)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE event_type
        WHEN 'subscribe' THEN 'subscription.resubscribed'
        WHEN 'unsubscribe' THEN 'subscription.unsubscribed'
        WHEN 'bounce' THEN 'contact.hard_bounced'
        WHEN 'complaint' THEN 'contact.complained'
        WHEN 'delivered' THEN 'message.delivered'
        WHEN 'open' THEN 'message.opened'
        WHEN 'click' THEN 'message.clicked'
        WHEN 'skipped' THEN CASE WHEN transactional THEN 'transactional.skipped' END
        WHEN 'failed' THEN CASE WHEN transactional THEN 'transactional.failed' END
    END
$$;

-- A JSON value Python would call true (the original's `metadata.get(k) or ...`).
CREATE FUNCTION client_webhook_truthy(v jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT v IS NOT NULL AND v::text NOT IN ('null', 'false', '""', '0', '[]', '{}')
$$;

CREATE FUNCTION email_events_client_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_type        text;
    v_url         text;
    v_token       text;
    v_client      text := '';
    v_meta        jsonb;
    v_audience    jsonb;
    v_preference  jsonb;
    v_payload     jsonb;
BEGIN
    IF NEW.contact_id IS NULL THEN
        RETURN NULL;
    END IF;
    v_type := client_webhook_event_type(NEW.event_type, NEW.transactional_message_id IS NOT NULL);
    IF v_type IS NULL THEN
        RETURN NULL;
    END IF;

    -- The client's URL and token when both are set, else the global fallback, else nothing.
    IF NEW.client_id IS NOT NULL THEN
        SELECT btrim(c.cmp_webhook_url), btrim(c.cmp_webhook_token), c.slug
          INTO v_url, v_token, v_client
          FROM clients c WHERE c.id = NEW.client_id;
    END IF;
    IF coalesce(v_url, '') = '' OR coalesce(v_token, '') = '' THEN
        SELECT btrim(f.url), btrim(f.token) INTO v_url, v_token FROM client_webhook_fallback f;
    END IF;
    IF coalesce(v_url, '') = '' OR coalesce(v_token, '') = '' THEN
        RETURN NULL;
    END IF;

    -- metadata: the transactional message's, overlaid with the event's, plus the ids.
    v_meta := CASE WHEN jsonb_typeof(NEW.metadata) = 'object' THEN NEW.metadata ELSE '{}' END;
    IF NEW.transactional_message_id IS NOT NULL THEN
        SELECT CASE WHEN jsonb_typeof(m.metadata) = 'object' THEN m.metadata ELSE '{}' END || v_meta
          INTO v_meta FROM transactional_messages m WHERE m.id = NEW.transactional_message_id;
        v_meta := coalesce(v_meta, '{}');
    END IF;
    IF NEW.campaign_id IS NOT NULL THEN
        v_meta := v_meta || jsonb_build_object('campaign_id', NEW.campaign_id);
    END IF;
    IF NEW.campaign_recipient_id IS NOT NULL THEN
        v_meta := v_meta || jsonb_build_object('campaign_recipient_id', NEW.campaign_recipient_id);
    END IF;
    IF NEW.transactional_message_id IS NOT NULL THEN
        v_meta := v_meta || jsonb_build_object('transactional_message_id', NEW.transactional_message_id);
    END IF;
    IF NEW.provider_event_id <> '' THEN
        v_meta := v_meta || jsonb_build_object('provider_event_id', NEW.provider_event_id);
    END IF;

    IF NEW.audience_id IS NOT NULL THEN
        SELECT to_jsonb(a.slug) INTO v_audience FROM audiences a WHERE a.id = NEW.audience_id;
    END IF;
    v_audience := coalesce(v_audience, v_meta -> 'audience', '""');

    v_payload := jsonb_build_object(
        'event_id', 'datamailer-email-event:' || NEW.id,
        'event_type', v_type,
        'email', (SELECT c.normalized_email FROM contacts c WHERE c.id = NEW.contact_id),
        'occurred_at', to_char(NEW.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00',
        'contact_id', NEW.contact_id,
        'email_event_id', NEW.id,
        'audience', v_audience,
        'client', coalesce(v_client, ''),
        'metadata', v_meta
    );
    v_preference := CASE
        WHEN client_webhook_truthy(v_meta -> 'preference_key') THEN v_meta -> 'preference_key'
        WHEN client_webhook_truthy(v_meta -> 'cmp_preference_key') THEN v_meta -> 'cmp_preference_key'
    END;
    IF v_preference IS NOT NULL THEN
        v_payload := v_payload || jsonb_build_object('preference_key', v_preference);
    END IF;

    INSERT INTO cmp_callbacks (email_event_id, contact_id, client_id, audience_id, event_id,
                               event_type, callback_url, payload, next_attempt_at)
    VALUES (NEW.id, NEW.contact_id, NEW.client_id, NEW.audience_id,
            'datamailer-email-event:' || NEW.id, v_type, v_url, v_payload, now())
    ON CONFLICT (email_event_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER email_events_client_webhook
    AFTER INSERT ON email_events
    FOR EACH ROW EXECUTE FUNCTION email_events_client_webhook();
