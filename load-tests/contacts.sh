#!/usr/bin/env bash
# Contacts benchmark (issue 9's floors): a 100,000-row CSV import, the 100,000-contact CSV
# export (streamed; peak RSS of the server sampled while it runs), and API upserts/s with
# wrk at the default connection cap. Usage:
#   DATAMAILER_BIN=target/release/datamailer ROWS=100000 load-tests/contacts.sh
# Writes load-tests/results/contacts-<time>/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${DATAMAILER_BIN:-target/release/datamailer}"
ROWS="${ROWS:-100000}"
PG="${PG_URL_BASE:-postgres://postgres@127.0.0.1:5432}"
DB="dm_contacts_$$"
OUT="load-tests/results/contacts-$(date +%Y%m%d-%H%M%S)"
PORT="${PORT:-18080}"
mkdir -p "$OUT"
[[ -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release --bin datamailer)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null
cleanup() { kill "${SERVER:-}" 2>/dev/null || true; wait 2>/dev/null || true; psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null; }
[[ -n "${KEEP_DB:-}" ]] || trap cleanup EXIT
export DATABASE_URL="$PG/$DB" DATAMAILER_HTTP_ADDR="127.0.0.1:$PORT" DATAMAILER_METRICS_ADDR="127.0.0.1:$((PORT + 1))" RUST_LOG=warn
"$BIN" migrate >/dev/null
KEY=$("$BIN" provision --org bench --audience news --client shop --sender news=news@example.com | tail -1)
"$BIN" serve >"$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health/" >/dev/null && break; sleep 0.1; done

python3 - "$ROWS" >"$OUT/import.csv" <<'PY'
import sys
n = int(sys.argv[1])
print("email,tags,subscription_status,verified")
for i in range(n):
    print(f"user{i}@example.com,t{i % 10};all,subscribed,yes")
PY
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$SERVER/status"; }
# CPU seconds of the server, and of all Postgres backends, so far.
cpu_dm() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$SERVER/stat"; }
cpu_pg() { ps -C postgres -o times= | awk '{s += $1} END {print s}'; }
now() { date +%s.%N; }

dm0=$(cpu_dm); pg0=$(cpu_pg)
t0=$(now)
curl -fs -o "$OUT/import.json" -H "Authorization: Bearer $KEY" \
  -F "file=@$OUT/import.csv" -F audience=news -F client=shop \
  "http://127.0.0.1:$PORT/api/contacts/imports/csv"
t1=$(now)
created=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['counts']['created'])" "$OUT/import.json")
rss_after_import=$(peak_rss)
dm1=$(cpu_dm); pg1=$(cpu_pg)

t2=$(now)
curl -fs -o "$OUT/export.csv" -H "Authorization: Bearer $KEY" \
  "http://127.0.0.1:$PORT/api/contacts.csv?audience=news&client=shop&limit=$ROWS"
t3=$(now)
exported=$(($(wc -l <"$OUT/export.csv") - 1))
rss_after_export=$(peak_rss)

# Every request a new address: each wrk thread has its own id (without it both threads,
# seeded alike, send the same addresses and half the upserts are updates of the other's).
cat >"$OUT/upsert.lua" <<LUA
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
counter = 0
request = function()
  counter = counter + 1
  local body = '{"email":"w' .. tid .. '-' .. counter .. '@example.com","audience":"news","client":"shop","tags":["wrk"]}'
  return wrk.format("POST", "/api/contacts", {["Authorization"] = "Bearer $KEY", ["Content-Type"] = "application/json"}, body)
end
LUA
wrk -t2 -c16 -d10s -s "$OUT/upsert.lua" "http://127.0.0.1:$PORT" >"$OUT/wrk.txt"
upserts=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$OUT/wrk.txt")
conns=$(psql "$PG/postgres" -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB'")

{
  echo "binary: $BIN"
  echo "csv import: $ROWS rows, created $created, $(echo "$t1 - $t0" | bc) s (CPU: server $(echo "$dm1 - $dm0" | bc) s, postgres $((pg1 - pg0)) s)"
  echo "csv export: $exported rows, $(echo "$t3 - $t2" | bc) s"
  echo "server peak RSS: after import ${rss_after_import} kB, after export ${rss_after_export} kB"
  echo "api upserts: $upserts req/s (wrk 16 connections, 10 s), non-2xx: ${non2xx:-0}"
  echo "postgres connections of the server at the end: $conns"
} | tee "$OUT/summary.txt"
