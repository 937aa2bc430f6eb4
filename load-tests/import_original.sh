#!/usr/bin/env bash
# import-original benchmark: an original database (our fixture of its schema) with ROWS
# contacts, ROWS subscriptions, ROWS transactional messages and 2 x ROWS email events, moved
# into a fresh datamailer database; then the catch-up re-run. Usage:
#   DATAMAILER_BIN=target/release/datamailer ROWS=100000 load-tests/import_original.sh
# Writes load-tests/results/import-original-<time>/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${DATAMAILER_BIN:-target/release/datamailer}"
ROWS="${ROWS:-100000}"
PG="${PG_URL_BASE:-postgres://postgres@127.0.0.1:5432}"
SRC="dm_original_$$"
DST="dm_imported_$$"
OUT="load-tests/results/import-original-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
[[ -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release --bin datamailer)" >&2; exit 1; }
cleanup() { for db in "$SRC" "$DST"; do psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; done; }
trap cleanup EXIT
psql "$PG/postgres" -qc "CREATE DATABASE $SRC" -c "CREATE DATABASE $DST" >/dev/null
psql "$PG/$SRC" -q -v ON_ERROR_STOP=1 -f tests/fixtures/original/schema.postgres.sql
(echo "SET TIME ZONE 'UTC';"; cat tests/fixtures/original/seed.sql) | psql "$PG/$SRC" -q -v ON_ERROR_STOP=1
# Bulk rows above the seed's ids.
psql "$PG/$SRC" -q -v ON_ERROR_STOP=1 -v rows="$ROWS" <<'SQL'
INSERT INTO contacts (id, created_at, updated_at, email, normalized_email, email_validation_status, email_validation_reason)
SELECT 100 + g, now(), now(), 'user' || g || '@example.com', 'user' || g || '@example.com', 'unknown', ''
  FROM generate_series(1, :rows) g;
INSERT INTO subscriptions (id, created_at, updated_at, contact_id, audience_id, client_id, status, verified_at, unsubscribe_reason)
SELECT 100 + g, now(), now(), 100 + g, 1, 1, 'subscribed', now(), '' FROM generate_series(1, :rows) g;
INSERT INTO transactional_messages (id, created_at, updated_at, client_id, contact_id, email, from_email_id, from_email,
    template_id, template_key, status, idempotency_key, subject, html_body, text_body, context, ses_message_id, sent_at,
    open_count, click_count, metadata, last_error)
SELECT 100 + g, now(), now(), 1, 100 + g, 'user' || g || '@example.com', 'news', 'news@datatalks.club', 1,
       'password-reset', 'sent', 'bulk-' || g, 'Reset your password', '<p>Reset: https://x.example/r/' || g || '</p>',
       'Reset: https://x.example/r/' || g, jsonb_build_object('name', 'User ' || g), 'ses-' || g, now(), 0, 0, '{}', ''
  FROM generate_series(1, :rows) g;
INSERT INTO email_events (id, created_at, transactional_message_id, contact_id, client_id, event_type, provider_event_id, url, metadata)
SELECT 100 + g, now(), 100 + (g + 1) / 2, 100 + (g + 1) / 2, 1, CASE WHEN g % 2 = 1 THEN 'sent' ELSE 'delivered' END,
       CASE WHEN g % 2 = 0 THEN 'sns-' || g ELSE '' END, '', '{}'
  FROM generate_series(1, 2 * :rows) g;
SQL
export DATABASE_URL="$PG/$DST" RUST_LOG=warn
"$BIN" migrate >/dev/null
now() { date +%s.%N; }
t0=$(now); "$BIN" import-original --from "$PG/$SRC" >"$OUT/import.txt"; t1=$(now)
"$BIN" import-original --from "$PG/$SRC" >"$OUT/rerun.txt"; t2=$(now)
total=$(awk '/ rows: / {s += $2} END {print s}' "$OUT/import.txt")
{
  echo "rows in the original: $total ($ROWS contacts, subscriptions and messages; $((2 * ROWS)) events)"
  printf 'import:   %.1f s (%.0f rows/s)\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$total / ($t1 - $t0)" | bc -l)"
  printf 're-run:   %.1f s (nothing new)\n' "$(echo "$t2 - $t1" | bc)"
  grep -E "^(contacts|subscriptions|transactional_messages|email_events) .* rows: " "$OUT/import.txt"
  tail -1 "$OUT/import.txt"
} | tee "$OUT/summary.txt"
