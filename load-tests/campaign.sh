#!/usr/bin/env bash
# Campaign benchmark (issue 10's floors): N verified subscribers (default 100,000), one campaign
# queued through the API on `serve`, timed from the campaign's own transition timestamps:
# snapshot (snapshot_started_at -> snapshot_finished_at) and fan-out (snapshot finished -> every
# recipient `sent`), with peak Postgres connections and peak RSS sampled while it runs.
#   DATAMAILER_BIN=target/release/datamailer N=100000 load-tests/campaign.sh            # capture
#   MAILER=ses LATENCY_MS=50 DATAMAILER_BIN=... load-tests/campaign.sh                  # fake SES
# Writes load-tests/results/campaign-<time>/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${DATAMAILER_BIN:-target/release/datamailer}"
N="${N:-100000}"
MAILER="${MAILER:-capture}"
PG="${PG_URL_BASE:-postgres://postgres@127.0.0.1:5432}"
DB="dm_campaign_$$"
OUT="load-tests/results/campaign-$(date +%Y%m%d-%H%M%S)"
PORT="${PORT:-18090}"
mkdir -p "$OUT"
[[ -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release --bin datamailer)" >&2; exit 1; }
psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null
cleanup() {
  kill "${SERVER:-}" "${SES:-}" 2>/dev/null || true; wait 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
}
trap cleanup EXIT
export DATABASE_URL="$PG/$DB" DATAMAILER_HTTP_ADDR="127.0.0.1:$PORT" \
  DATAMAILER_METRICS_ADDR="127.0.0.1:$((PORT + 1))" RUST_LOG=warn PUBLIC_BASE_URL="https://mail.example.com"
if [[ "$MAILER" == ses ]]; then
  python3 load-tests/fake-ses/fake_ses.py --port $((PORT + 2)) --latency-ms "${LATENCY_MS:-50}" \
    --max-send-rate 100000 --max-24-hour-send 100000000 2>"$OUT/fake-ses.log" &
  SES=$!
  export DATAMAILER_MAILER=ses AWS_ENDPOINT_URL="http://127.0.0.1:$((PORT + 2))" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test DATAMAILER_SES_MAX_SEND_RATE=0
fi
"$BIN" migrate >/dev/null
KEY=$("$BIN" provision --org bench --audience news --client shop --sender news=news@example.com | tail -1)
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<SQL
WITH a AS (SELECT id FROM audiences WHERE slug = 'news'), cl AS (SELECT id FROM clients WHERE slug = 'shop'),
c AS (INSERT INTO contacts (email, normalized_email, verified_at)
      SELECT 'r' || g || '@example.com', 'r' || g || '@example.com', now() FROM generate_series(1, $N) g RETURNING id)
INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at)
SELECT c.id, a.id, cl.id, 'subscribed', now() FROM c, a, cl;
ANALYZE;
SQL
"$BIN" serve >"$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health/" >/dev/null && break; sleep 0.1; done
api() { curl -fs -X "$1" "http://127.0.0.1:$PORT$2" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$3"; }
api PUT /api/campaigns/bench '{"audience":"news","client":"shop","subject":"Benchmark","html_body":"<p>Hello, read <a href=\"https://blog.example.com/post\">this</a>.</p>","text_body":"Hello"}' >/dev/null
peak_conn=0; peak_rss=0
api POST /api/campaigns/bench/queue '{"audience":"news","client":"shop"}' >"$OUT/queue.json"
while true; do
  status=$(psql "$DATABASE_URL" -Atc "SELECT status FROM campaigns WHERE external_key = 'bench'")
  conn=$(psql "$PG/postgres" -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB'")
  (( conn - 1 > peak_conn )) && peak_conn=$((conn - 1))  # minus this psql
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status"); (( rss > peak_rss )) && peak_rss=$rss
  [[ "$status" == sent || "$status" == failed ]] && break
  sleep 0.5
done
psql "$DATABASE_URL" -At -F ' ' -c "
  SELECT recipient_count, sent_count,
         extract(epoch FROM snapshot_finished_at - snapshot_started_at),
         extract(epoch FROM sent_at - snapshot_finished_at),
         extract(epoch FROM sent_at - queued_at)
    FROM campaigns WHERE external_key = 'bench'" >"$OUT/times.txt"
read -r recipients sent snapshot fanout total <"$OUT/times.txt"
mailed=$([[ "$MAILER" == ses ]] && curl -fs "http://127.0.0.1:$((PORT + 2))/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sends"])' \
  || psql "$DATABASE_URL" -Atc "SELECT count(DISTINCT to_addresses) FROM captured_messages")
{
  echo "mailer: $MAILER${LATENCY_MS:+ (${LATENCY_MS} ms)}; recipients: $recipients, sent: $sent, mails seen by the mailer: $mailed"
  printf 'snapshot of %d recipients: %.2f s\n' "$recipients" "$snapshot"
  printf 'fan-out (snapshot done -> all sent): %.2f s = %.0f emails/s\n' "$fanout" "$(echo "$sent / $fanout" | bc -l)"
  printf 'queue -> sent: %.2f s\n' "$total"
  echo "peak Postgres connections of the server: $peak_conn; peak RSS: $((peak_rss / 1024)) MiB"
} | tee "$OUT/summary.txt"
