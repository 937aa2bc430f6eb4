-- Test sends of a campaign (POST /api/campaigns/{key}/test-send): the web writes one row per
-- address and the campaign-email tree sends them (the web holds no SES permission), while the
-- request waits for the result. Links in test mail are inert: their tokens name no recipient.
CREATE TABLE campaign_test_sends (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id     bigint NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    email           varchar(320) NOT NULL,
    status          varchar(20) NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    ses_message_id  varchar(255) NOT NULL DEFAULT '',
    error           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX campaign_test_sends_campaign ON campaign_test_sends (campaign_id, created_at);
