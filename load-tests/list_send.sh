#!/usr/bin/env bash
# Recipient-list transactional send (issue 9): a list of MEMBERS members (bulk-upserted 1,000
# per request), then one POST .../transactional-send, timed; then the same request again (all
# replays). Runs `serve` (release binary, capture mailer) on its own database.
#   DATAMAILER_BIN=target/release/datamailer MEMBERS=10000 load-tests/list_send.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${DATAMAILER_BIN:-target/release/datamailer}"
MEMBERS="${MEMBERS:-10000}"
PG="${PG_URL_BASE:-postgres://postgres@127.0.0.1:5432}"
DB="dm_listsend_$$"
PORT="${PORT:-18280}"
[[ -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release --bin datamailer)" >&2; exit 1; }
psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null
cleanup() { kill "${SERVER:-}" 2>/dev/null || true; wait 2>/dev/null || true; psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null; }
trap cleanup EXIT
export DATABASE_URL="$PG/$DB" DATAMAILER_HTTP_ADDR="127.0.0.1:$PORT" DATAMAILER_METRICS_ADDR="127.0.0.1:$((PORT + 1))" RUST_LOG=warn
"$BIN" migrate >/dev/null
KEY=$("$BIN" provision --org bench --audience news --client shop --sender news=news@example.com | tail -1)
"$BIN" serve >/dev/null 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health/" >/dev/null && break; sleep 0.1; done
api() { curl -fs -X "$1" "http://127.0.0.1:$PORT$2" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' --data-binary @-; }
echo '{"name": "Notice", "subject": "Hi {{ name }}", "text_body": "Hello {{ name }} from {{ course }}", "required_context": ["name"]}' \
  | api PUT /api/transactional/templates/notice >/dev/null
for ((start = 0; start < MEMBERS; start += 1000)); do
  python3 - "$start" "$MEMBERS" <<'PY' | api POST /api/recipient-lists/bench/members/bulk-upsert >/dev/null
import json, sys
start, total = int(sys.argv[1]), int(sys.argv[2])
members = [{"source_object_key": f"m{i}", "email": f"m{i}@example.com", "metadata": {"name": f"M{i}"}}
           for i in range(start, min(start + 1000, total))]
print(json.dumps({"audience": "news", "client": "shop", "members": members}))
PY
done
body='{"audience": "news", "client": "shop", "template_key": "notice", "idempotency_key": "week-1", "context": {"course": "ML"}}'
t0=$(date +%s.%N)
first=$(echo "$body" | api POST /api/recipient-lists/bench/transactional-send)
t1=$(date +%s.%N)
again=$(echo "$body" | api POST /api/recipient-lists/bench/transactional-send)
t2=$(date +%s.%N)
echo "members: $MEMBERS"
echo "first send: $(echo "$t1 - $t0" | bc) s: $(echo "$first" | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("created_count","enqueued_count","skipped_count","idempotent_replay_count")})')"
echo "replay:     $(echo "$t2 - $t1" | bc) s: $(echo "$again" | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("created_count","idempotent_replay_count")})')"
echo "postgres connections of the server at the end: $(psql "$PG/postgres" -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB'")"
