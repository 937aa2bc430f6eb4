#!/usr/bin/env bash
# SES feedback benchmark (issue 11's floor: >= 5,000 events/s on the embedded queue with <= 8
# Postgres connections, flat as the campaign grows). A campaign of N recipients already sent
# (default 100,000), then E SES events (default 30,000) as SNS envelopes on the embedded
# ses-webhooks queue: 70 % Delivery, 10 % Open, 10 % Send, 5 % soft bounce, 3 % hard bounce,
# 2 % complaint, each tagged as our sends are. `datamailer worker --queue ses-webhooks` drains
# them; events/s is counted from the history rows as they commit.
#   DATAMAILER_BIN=target/release/datamailer N=10000 load-tests/feedback.sh
#   DATAMAILER_BIN=target/release/datamailer N=100000 load-tests/feedback.sh
# Writes load-tests/results/feedback-<time>/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${DATAMAILER_BIN:-target/release/datamailer}"
N="${N:-100000}"
E="${E:-30000}"
PG="${PG_URL_BASE:-postgres://postgres@127.0.0.1:5432}"
DB="dm_feedback_$$"
OUT="load-tests/results/feedback-$(date +%Y%m%d-%H%M%S)-n$N"
PORT="${PORT:-18190}"
mkdir -p "$OUT"
[[ -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release --bin datamailer)" >&2; exit 1; }
psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null
cleanup() {
  kill "${WORKER:-}" 2>/dev/null || true; wait 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] && { echo "kept database $DB"; return; }
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
}
trap cleanup EXIT
export DATABASE_URL="$PG/$DB" DATAMAILER_METRICS_ADDR="127.0.0.1:$PORT" RUST_LOG=warn
"$BIN" migrate >/dev/null
"$BIN" provision --org bench --audience news --client shop --sender news=news@example.com >/dev/null
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<SQL
WITH a AS (SELECT id FROM audiences WHERE slug = 'news'), cl AS (SELECT id FROM clients WHERE slug = 'shop'),
camp AS (INSERT INTO campaigns (client_id, audience_id, external_key, subject, status, sending_started_at,
                                recipient_count, sent_count)
         SELECT cl.id, a.id, 'bench', 'Benchmark', 'sending', now(), $N, $N FROM cl, a RETURNING id),
c AS (INSERT INTO contacts (email, normalized_email, verified_at)
      SELECT 'r' || g || '@example.com', 'r' || g || '@example.com', now() FROM generate_series(1, $N) g
      RETURNING id, email)
INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, ses_message_id, sent_at)
SELECT camp.id, c.id, c.email, 'sent', 'ses-' || c.id, now() FROM c, camp;
-- E events spread over the recipients, the kinds interleaved as they arrive in production.
WITH r AS (SELECT id, email, ses_message_id, row_number() OVER (ORDER BY id) AS n FROM campaign_recipients),
ev AS (
  SELECT g, r.*, CASE WHEN g % 100 < 70 THEN 'Delivery' WHEN g % 100 < 80 THEN 'Open'
                      WHEN g % 100 < 90 THEN 'Send' WHEN g % 100 < 95 THEN 'SoftBounce'
                      WHEN g % 100 < 98 THEN 'Bounce' ELSE 'Complaint' END AS kind
    FROM generate_series(1, $E) g JOIN r ON r.n = (g * 7919) % $N + 1
),
msg AS (
  SELECT g, jsonb_build_object(
      'eventType', CASE kind WHEN 'SoftBounce' THEN 'Bounce' ELSE kind END,
      'mail', jsonb_build_object('messageId', ses_message_id, 'timestamp', '2026-12-04T10:00:00.000Z',
                                 'source', 'news@example.com', 'destination', jsonb_build_array(email),
                                 'tags', jsonb_build_object('datamailer_kind', jsonb_build_array('campaign'),
                                                            'datamailer_id', jsonb_build_array(id::text))))
    || CASE kind
         WHEN 'Delivery' THEN jsonb_build_object('delivery', jsonb_build_object('timestamp', '2026-12-04T10:00:02.000Z',
                                  'recipients', jsonb_build_array(email), 'smtpResponse', '250 ok'))
         WHEN 'Open' THEN jsonb_build_object('open', jsonb_build_object('timestamp', '2026-12-04T10:05:00.000Z',
                                  'ipAddress', '192.0.2.1', 'userAgent', 'Mozilla/5.0'))
         WHEN 'Send' THEN jsonb_build_object('send', '{}'::jsonb)
         WHEN 'SoftBounce' THEN jsonb_build_object('bounce', jsonb_build_object('bounceType', 'Transient',
                                  'bounceSubType', 'MailboxFull', 'timestamp', '2026-12-04T10:00:02.000Z',
                                  'bouncedRecipients', jsonb_build_array(jsonb_build_object('emailAddress', email))))
         WHEN 'Bounce' THEN jsonb_build_object('bounce', jsonb_build_object('bounceType', 'Permanent',
                                  'bounceSubType', 'General', 'timestamp', '2026-12-04T10:00:02.000Z',
                                  'bouncedRecipients', jsonb_build_array(jsonb_build_object('emailAddress', email))))
         ELSE jsonb_build_object('complaint', jsonb_build_object('timestamp', '2026-12-04T10:01:00.000Z',
                                  'complaintFeedbackType', 'abuse',
                                  'complainedRecipients', jsonb_build_array(jsonb_build_object('emailAddress', email))))
       END AS event
    FROM ev
)
INSERT INTO queue_messages (queue, body)
SELECT 'ses-webhooks', jsonb_build_object('Type', 'Notification', 'MessageId', 'bench-' || g,
         'TopicArn', 'arn:aws:sns:us-east-1:123456789012:ses-events', 'Timestamp', '2026-12-04T10:00:05.000Z',
         'Message', event::text)::text
  FROM msg ORDER BY g;
ANALYZE;
SQL
"$BIN" worker --queue ses-webhooks >"$OUT/worker.log" 2>&1 &
WORKER=$!
peak_conn=0; peak_rss=0; first=""; : >"$OUT/progress.txt"
while true; do
  read -r now events left < <(psql "$DATABASE_URL" -At -F ' ' -c "
    SELECT extract(epoch FROM clock_timestamp()), (SELECT count(*) FROM email_events),
           (SELECT count(*) FROM queue_messages WHERE queue = 'ses-webhooks' AND dead_lettered_at IS NULL)")
  echo "$now $events $left" >>"$OUT/progress.txt"
  conn=$(psql "$PG/postgres" -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB'")
  (( conn - 1 > peak_conn )) && peak_conn=$((conn - 1))  # minus this psql
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$WORKER/status"); (( rss > peak_rss )) && peak_rss=$rss
  if [[ -z "$first" && "$events" -gt 0 ]]; then first="$now $events"; fi
  [[ "$left" -eq 0 ]] && break
  sleep 0.2
done
read -r t0 e0 <<<"$first"
read -r t1 e1 _ < <(tail -1 "$OUT/progress.txt")
psql "$DATABASE_URL" -At -F ' ' -c "
  SELECT delivered_count, bounce_count, complaint_count, open_count,
         (SELECT count(*) FROM contacts WHERE hard_bounced_at IS NOT NULL),
         (SELECT count(*) FROM contacts WHERE complained_at IS NOT NULL),
         (SELECT count(*) FROM queue_messages WHERE dead_lettered_at IS NOT NULL), pause_reason
    FROM campaigns WHERE external_key = 'bench'" >"$OUT/counts.txt"
{
  echo "campaign of $N recipients; $E SES events (SNS envelopes) on the embedded queue; history rows: $e1"
  printf 'applied: %d events in %.2f s = %.0f events/s (from the first committed event to the last)\n' \
    "$((e1 - e0))" "$(echo "$t1 - $t0" | bc -l)" "$(echo "($e1 - $e0) / ($t1 - $t0)" | bc -l)"
  echo "campaign counters (delivered bounce complaint open), contacts hard-bounced, complained, dead letters, pause: $(cat "$OUT/counts.txt")"
  echo "peak Postgres connections of the worker: $peak_conn; peak RSS: $((peak_rss / 1024)) MiB"
} | tee "$OUT/summary.txt"
