-- Index work a fan-out pays per recipient and no query reads (load-tests/campaign.sh: Postgres
-- is the bottleneck of sending; every recipient row is written twice, claim and record):
--
-- * first_opened_at / first_clicked_at are read per row, never searched.
-- * Token hashes exist only for rows moved over from the original (ours are signed, not
--   stored): a partial unique index holds just those.
-- * campaign_recipients_pending duplicated (campaign_id, status) for every transition.
-- * The client-webhook trigger ran its function for every event only to return at once for
--   the types that have no webhook (`sent`, `queued`); its WHEN now skips them.
DROP INDEX campaign_recipients_first_opened;
DROP INDEX campaign_recipients_first_clicked;
DROP INDEX campaign_recipients_pending;
ALTER TABLE campaign_recipients DROP CONSTRAINT campaign_recipients_tracking_token_hash_key;
ALTER TABLE campaign_recipients DROP CONSTRAINT campaign_recipients_unsubscribe_token_hash_key;
CREATE UNIQUE INDEX campaign_recipients_tracking_token_hash ON campaign_recipients (tracking_token_hash)
    WHERE tracking_token_hash IS NOT NULL;
CREATE UNIQUE INDEX campaign_recipients_unsubscribe_token_hash ON campaign_recipients (unsubscribe_token_hash)
    WHERE unsubscribe_token_hash IS NOT NULL;

DROP TRIGGER email_events_client_webhook ON email_events;
CREATE TRIGGER email_events_client_webhook
    AFTER INSERT ON email_events
    FOR EACH ROW
    WHEN (NEW.contact_id IS NOT NULL
          AND NEW.event_type IN ('subscribe', 'unsubscribe', 'bounce', 'complaint', 'delivered',
                                 'open', 'click', 'skipped', 'failed'))
    EXECUTE FUNCTION email_events_client_webhook();
