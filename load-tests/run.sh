#!/usr/bin/env bash
# Load tests for datamailer's embedded path (Postgres queue), see load-tests/README.md.
#
#   load-tests/run.sh                     # build, then every scenario in every mode
#   load-tests/run.sh api e2e             # some scenarios
#   MODES=ses FAKE_SES_LATENCY_MS=20 load-tests/run.sh e2e
#
# Scenarios: api (sustained sends for API_SECONDS), e2e (a burst of E2E_MESSAGES through the API
# while the workers run, until every row is sent), burndown (BURNDOWN_MESSAGES queued with SQL
# while nothing runs, then the drain rate of a fresh `datamailer serve`).
# Modes: capture (DATAMAILER_MAILER=capture) and ses (DATAMAILER_MAILER=ses against fake-ses).
#
# Needs: cargo, psql, curl, python3, wrk (Debian: apt-get install -y wrk).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

MODES="${MODES:-capture ses}"
SCENARIOS="${*:-api e2e burndown}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-release}"
BIN="${DATAMAILER_BIN:-$CARGO_TARGET_DIR/release/datamailer}"
PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-postgres}"
DB_PREFIX="${DB_PREFIX:-dm_load}"
DB_MAX_CONNECTIONS="${DB_MAX_CONNECTIONS:-8}"
HTTP_PORT="${HTTP_PORT:-18080}"
METRICS_PORT="${METRICS_PORT:-19464}"
FAKE_SES_PORT="${FAKE_SES_PORT:-14599}"
FAKE_SES_LATENCY_MS="${FAKE_SES_LATENCY_MS:-0}"
API_SECONDS="${API_SECONDS:-30}"
API_CONNECTIONS="${API_CONNECTIONS:-32}"
WRK_THREADS="${WRK_THREADS:-2}"
E2E_MESSAGES="${E2E_MESSAGES:-30000}"
BURNDOWN_MESSAGES="${BURNDOWN_MESSAGES:-50000}"
# `serve` (web + workers, the embedded deployment) or `worker` (workers only, all connections).
BURNDOWN_COMMAND="${BURNDOWN_COMMAND:-serve}"
DRAIN_TIMEOUT_S="${DRAIN_TIMEOUT_S:-900}"
# Postgres synchronous_commit for the load-test database only (ALTER DATABASE; the cluster's
# setting is untouched). `on` is the product default; `off` shows the rates without waiting
# for WAL flushes (see README: the flush rate is this machine's bottleneck).
SYNC_COMMIT="${SYNC_COMMIT:-on}"
SKIP_BUILD="${SKIP_BUILD:-0}"
OUT="${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}"

mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
: >"$SUMMARY"
TEMPLATE_KEY=load

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"; log "  $1/$2 $3 = $4"; }

for tool in psql curl python3 wrk; do
  command -v "$tool" >/dev/null || die "$tool not found (wrk: apt-get install -y wrk)"
done

# --- processes we start; all stopped on exit --------------------------------------------------
DM_PID=""
FAKE_PID=""
SAMPLER_PIDS=()
cleanup() {
  local rc=$?
  stop_samplers || true
  [[ -f "$OUT/wrk.pid" ]] && kill "$(cat "$OUT/wrk.pid")" 2>/dev/null || true
  [[ -n "$DM_PID" ]] && kill -TERM "$DM_PID" 2>/dev/null && wait "$DM_PID" 2>/dev/null || true
  [[ -n "$FAKE_PID" ]] && kill -TERM "$FAKE_PID" 2>/dev/null && wait "$FAKE_PID" 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every psql of the harness names itself (PGAPPNAME), so the connection samples can leave it
# out. Not exported: sqlx reads PGAPPNAME too, and datamailer's web pool must stay counted.
pg_admin() { PGAPPNAME=dm-loadtest psql -X -q -At -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"; }
pg_db() { PGAPPNAME=dm-loadtest psql -X -q -At -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" "$@"; }

# --- build ------------------------------------------------------------------------------------
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR; ~11 min cold)"
  (cd "$ROOT" && cargo build --release --bin datamailer) >"$OUT/build.log" 2>&1 || {
    tail -30 "$OUT/build.log" >&2
    die "release build failed"
  }
fi
[[ -x "$BIN" ]] || die "$BIN missing (build first or unset SKIP_BUILD)"

# The checked-out commit, read from .git without running git (the tree may have local edits).
commit_id() {
  local head ref
  head=$(cat "$ROOT/.git/HEAD" 2>/dev/null) || { echo unknown; return; }
  if [[ "$head" == ref:* ]]; then
    ref=${head#ref: }
    cat "$ROOT/.git/$ref" 2>/dev/null | cut -c1-10 ||
      awk -v r="$ref" '$2 == r {print substr($1, 1, 10)}' "$ROOT/.git/packed-refs" 2>/dev/null || echo unknown
  else
    echo "${head:0:10}"
  fi
}

# --- machine facts ----------------------------------------------------------------------------
{
  echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(commit_id)"
  echo "cores=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "loadavg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "postgres=$(pg_admin -c 'show server_version')"
  echo "synchronous_commit=$(pg_admin -c 'show synchronous_commit')"
  echo "db_max_connections=$DB_MAX_CONNECTIONS"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# --- samplers: Postgres connections (every 100 ms), backend activity, datamailer's sockets ---
start_samplers() { # $1 = file prefix
  local prefix="$1"
  # One long-lived psql per sampler (connected to `postgres`, so not counted itself).
  printf "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND application_name IS DISTINCT FROM 'dm-loadtest' \\\\watch 0.1\n" "$DB" \
    | pg_admin >"$prefix.connections" 2>/dev/null &
  SAMPLER_PIDS+=($!)
  printf "SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-') || '|' || regexp_replace(left(query, 70), '\\s+', ' ', 'g') FROM pg_stat_activity WHERE datname = '%s' AND application_name IS DISTINCT FROM 'dm-loadtest' AND state = 'active' \\\\watch 0.1\n" "$DB" \
    | pg_admin >"$prefix.activity" 2>/dev/null &
  SAMPLER_PIDS+=($!)
  # Cross-check from the process side: its established TCP connections to Postgres.
  (
    while kill -0 "$DM_PID" 2>/dev/null; do
      ss -Htnp state established "( dport = :$PG_PORT )" 2>/dev/null | grep -c "pid=$DM_PID," || true
      sleep 0.1
    done
  ) >"$prefix.sockets" &
  SAMPLER_PIDS+=($!)
}
stop_samplers() {
  local p
  for p in "${SAMPLER_PIDS[@]:-}"; do
    # A backgrounded function is a subshell: end its children (the psql) first, or they keep
    # polling every 100 ms after the run and slow every later one.
    [[ -n "$p" ]] && { pkill -P "$p" 2>/dev/null; kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; } || true
  done
  SAMPLER_PIDS=()
}
max_of() { grep -E '^[0-9]+$' "$1" | sort -n | tail -1 || true; }

# CPU seconds of a process (utime + stime).
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Busy CPU seconds of the whole machine (all cores).
machine_busy_s() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{print ($2+$3+$4+$7+$8) / hz}' /proc/stat; }
# CPU seconds of the Postgres backends serving datamailer (their pids, from pg_stat_activity).
pg_backends_cpu_s() {
  local total=0 pid
  for pid in $(pg_admin -c "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' AND application_name IS DISTINCT FROM 'dm-loadtest'"); do
    total=$(awk -v a="$total" -v b="$(cpu_s "$pid")" 'BEGIN{print a + b}')
  done
  echo "$total"
}

# --- datamailer -------------------------------------------------------------------------------
# Runs "$@" with datamailer's environment. It `exec`s, so call it in a subshell or in the
# background: then $! is datamailer itself (not a bash subshell), for /proc and kill.
dm_exec() {
  exec env -u PGAPPNAME DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB" \
    DATAMAILER_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
    DATAMAILER_METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
    DATAMAILER_DB_MAX_CONNECTIONS="$DB_MAX_CONNECTIONS" \
    DATAMAILER_MAILER="$MODE" \
    RUST_LOG="${RUST_LOG:-warn,datamailer=info}" \
    "${MODE_ENV[@]}" "$@"
}

SCN_T0=0 SCN_BUSY0=0 SCN_WAL0="0 0"
start_dm() { # $1 = scenario label, $2 = command (serve|worker)
  local label="$1" cmd="${2:-serve}"
  if curl -fsS "http://127.0.0.1:$HTTP_PORT/health/" >/dev/null 2>&1; then
    die "something already answers on 127.0.0.1:$HTTP_PORT (set HTTP_PORT)"
  fi
  dm_exec "$BIN" "$cmd" >"$OUT/$MODE-$label.datamailer.log" 2>&1 &
  DM_PID=$!
  start_samplers "$OUT/$MODE-$label"
  if [[ "$cmd" == serve ]]; then
    local i
    for i in $(seq 1 200); do
      curl -fsS "http://127.0.0.1:$HTTP_PORT/health/" >/dev/null 2>&1 && break
      kill -0 "$DM_PID" 2>/dev/null || { tail -20 "$OUT/$MODE-$label.datamailer.log" >&2; die "datamailer $cmd exited"; }
      sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$HTTP_PORT/health/" >/dev/null || die "datamailer did not answer /health/"
  fi
  SCN_T0=$(date +%s.%N) SCN_BUSY0=$(machine_busy_s)
  SCN_WAL0=$(pg_admin -c "SELECT wal_sync || ' ' || wal_bytes FROM pg_stat_wal")
}

stop_dm() { # $1 = scenario label: records RSS, connections, CPU for the process's lifetime
  local label="$1" t1 wall dm_cpu pg_cpu busy s0 b0 s1 b1
  t1=$(date +%s.%N)
  wall=$(awk -v a="$SCN_T0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')
  dm_cpu=$(cpu_s "$DM_PID")
  pg_cpu=$(pg_backends_cpu_s)
  busy=$(awk -v a="$SCN_BUSY0" -v b="$(machine_busy_s)" -v w="$wall" 'BEGIN{printf "%.0f", 100 * (b - a) / w}')
  record "$MODE" "$label" peak_rss_mib "$(awk '/VmHWM/{printf "%.1f", $2 / 1024}' "/proc/$DM_PID/status")"
  kill -TERM "$DM_PID"
  wait "$DM_PID" || log "datamailer exited with $?"
  DM_PID=""
  stop_samplers
  record "$MODE" "$label" max_pg_connections "$(max_of "$OUT/$MODE-$label.connections")"
  record "$MODE" "$label" max_pg_sockets "$(max_of "$OUT/$MODE-$label.sockets")"
  record "$MODE" "$label" datamailer_cpu_s "$dm_cpu"
  record "$MODE" "$label" pg_backends_cpu_s "$pg_cpu"
  record "$MODE" "$label" wall_s "$wall"
  record "$MODE" "$label" machine_busy_pct "$busy"
  record "$MODE" "$label" loadavg_1m "$(cut -d' ' -f1 /proc/loadavg)"
  # WAL flushes per second over the run, for the whole cluster (other databases included).
  read -r s0 b0 <<<"$SCN_WAL0"
  read -r s1 b1 <<<"$(pg_admin -c "SELECT wal_sync || ' ' || wal_bytes FROM pg_stat_wal")"
  record "$MODE" "$label" cluster_wal_syncs_per_s "$(awk -v a="$s0" -v b="$s1" -v w="$wall" 'BEGIN{printf "%.0f", (b - a) / w}')"
  record "$MODE" "$label" cluster_wal_mib_per_s "$(awk -v a="$b0" -v b="$b1" -v w="$wall" 'BEGIN{printf "%.2f", (b - a) / w / 1048576}')"
  # Where the backends spent their samples (a poor man's pg_stat_statements).
  sort "$OUT/$MODE-$label.activity" | uniq -c | sort -rn | head -15 >"$OUT/$MODE-$label.activity.top" || true
}

wait_drained() { # waits until no row is queued or sending; prints seconds waited
  local t0 left i=0
  t0=$(date +%s.%N)
  while :; do
    left=$(pg_db -c "SELECT count(*) FROM transactional_messages WHERE status IN ('queued', 'sending')")
    [[ "$left" == 0 ]] && break
    (( i++ % 10 == 0 )) && log "    backlog: $left"
    awk -v a="$t0" -v b="$(date +%s.%N)" -v t="$DRAIN_TIMEOUT_S" 'BEGIN{exit !(b - a > t)}' && die "not drained after ${DRAIN_TIMEOUT_S}s ($left left)"
    sleep 0.5
  done
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}'
}

# Stats of the rows with id > $1: sent, not sent, window from first accept to last recorded send,
# rate, and per-message accept→sent latency percentiles.
e2e_stats() {
  pg_db -F ' ' -c "
    SELECT count(*) FILTER (WHERE status = 'sent'),
           count(*) FILTER (WHERE status <> 'sent'),
           round(extract(epoch FROM max(updated_at) FILTER (WHERE status = 'sent') - min(created_at))::numeric, 2),
           round((count(*) FILTER (WHERE status = 'sent')
                  / nullif(extract(epoch FROM max(updated_at) FILTER (WHERE status = 'sent') - min(created_at)), 0))::numeric, 1),
           round((1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at)))::numeric, 0),
           round((1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at)))::numeric, 0)
    FROM transactional_messages WHERE id > $1"
}

run_wrk() { # $1 label, then wrk args; parses the LT_RESULT line into the summary
  local label="$1"; shift
  API_KEY="$API_KEY" TEMPLATE_KEY="$TEMPLATE_KEY" RUN_TAG="$MODE$label$(date +%s)" \
    wrk -t"$WRK_THREADS" --latency --timeout 10s -s "$HERE/lib/send.lua" "$@" "http://127.0.0.1:$HTTP_PORT" \
    >"$OUT/$MODE-$label.wrk.txt" 2>&1 &
  echo $! >"$OUT/wrk.pid"
  wait "$!" || die "wrk failed: $(tail -5 "$OUT/$MODE-$label.wrk.txt")"
  rm -f "$OUT/wrk.pid"
  local line kv
  line=$(grep '^LT_RESULT' "$OUT/$MODE-$label.wrk.txt") || die "no LT_RESULT from wrk"
  for kv in ${line#LT_RESULT }; do
    case "${kv%%=*}" in
      rps | p50_ms | p95_ms | p99_ms | max_ms | requests | status_202 | status_other | socket_errors | timeouts)
        record "$MODE" "$label" "api_${kv%%=*}" "${kv#*=}" ;;
    esac
  done
}

# --- scenarios --------------------------------------------------------------------------------
scenario_api() {
  log "[$MODE] api: ${API_SECONDS}s, $API_CONNECTIONS connections, serve with $DB_MAX_CONNECTIONS connections"
  local start_id
  start_id=$(pg_db -c "SELECT coalesce(max(id), 0) FROM transactional_messages")
  start_dm api serve
  if [[ "${PROFILE:-0}" == 1 ]] && command -v perf >/dev/null; then
    # CPU profile of datamailer in the middle of the run (PROFILE=1).
    (sleep 5; perf record -F 499 -g -p "$DM_PID" -o "$OUT/$MODE-api.perf.data" -- sleep 10 >/dev/null 2>&1 &&
      perf report -i "$OUT/$MODE-api.perf.data" --no-children --sort symbol --stdio 2>/dev/null |
      grep -E "^ +[0-9]" | sed -E "s/ +- +- *$//; s/ +$//" | head -40 >"$OUT/$MODE-api.perf.top") &
  fi
  run_wrk api -c"$API_CONNECTIONS" -d"${API_SECONDS}s"
  record "$MODE" api backlog_at_end "$(pg_db -c "SELECT count(*) FROM transactional_messages WHERE id > $start_id AND status IN ('queued', 'sending')")"
  record "$MODE" api drain_after_s "$(wait_drained)"
  stop_dm api
  read -r sent unsent window rate p50 p99 <<<"$(e2e_stats "$start_id")"
  record "$MODE" api sent "$sent"
  record "$MODE" api not_sent "$unsent"
  record "$MODE" api e2e_emails_per_s "$rate"
}

scenario_e2e() {
  log "[$MODE] e2e: burst of $E2E_MESSAGES sends ($API_CONNECTIONS connections) while the workers run"
  local start_id per_thread
  start_id=$(pg_db -c "SELECT coalesce(max(id), 0) FROM transactional_messages")
  per_thread=$(( (E2E_MESSAGES + WRK_THREADS - 1) / WRK_THREADS ))
  start_dm e2e serve
  # wrk's main thread sleeps for the whole -d even when every thread has stopped at its
  # MAX_REQUESTS_PER_THREAD; so we watch the rows arrive and end wrk (SIGINT: it still reports).
  MAX_REQUESTS_PER_THREAD=$per_thread run_wrk e2e -c"$API_CONNECTIONS" -d600s &
  local wrk_job=$! n last=-1 still=0
  while kill -0 "$wrk_job" 2>/dev/null; do
    sleep 0.25
    n=$(pg_db -c "SELECT count(*) FROM transactional_messages WHERE id > $start_id")
    if (( n >= per_thread * WRK_THREADS )); then break; fi
    if (( n == last )); then (( ++still >= 12 )) && break; else still=0; fi
    last=$n
  done
  kill -INT "$(cat "$OUT/wrk.pid")" 2>/dev/null || true
  wait "$wrk_job" || die "wrk failed"
  # The accept rate from the rows themselves (wrk's own rps includes its last poll interval).
  record "$MODE" e2e api_accept_rate_db "$(pg_db -c "SELECT round((count(*) / nullif(extract(epoch FROM max(created_at) - min(created_at)), 0))::numeric, 1) FROM transactional_messages WHERE id > $start_id")"
  record "$MODE" e2e backlog_when_api_done "$(pg_db -c "SELECT count(*) FROM transactional_messages WHERE id > $start_id AND status IN ('queued', 'sending')")"
  record "$MODE" e2e drain_after_api_s "$(wait_drained)"
  stop_dm e2e
  read -r sent unsent window rate p50 p99 <<<"$(e2e_stats "$start_id")"
  record "$MODE" e2e sent "$sent"
  record "$MODE" e2e not_sent "$unsent"
  record "$MODE" e2e window_s "$window"
  record "$MODE" e2e e2e_emails_per_s "$rate"
  record "$MODE" e2e accept_to_sent_p50_ms "$p50"
  record "$MODE" e2e accept_to_sent_p99_ms "$p99"
}

scenario_burndown() {
  log "[$MODE] burndown: $BURNDOWN_MESSAGES queued with SQL, then \`datamailer $BURNDOWN_COMMAND\` drains them"
  local start_id tag
  start_id=$(pg_db -c "SELECT coalesce(max(id), 0) FROM transactional_messages")
  tag="bd$(date +%s)"
  # The rows and queue bodies the API would have written (TransactionalEmailV1::to_json's
  # fields; key order does not matter to the parser), plus the 'queued' event.
  pg_db -v n="$BURNDOWN_MESSAGES" -v tag="$tag" -v tkey="$TEMPLATE_KEY" <<'SQL'
WITH p AS (
    SELECT c.id AS client_id, t.id AS template_id, t.key AS template_key
    FROM clients c JOIN email_templates t ON t.client_id = c.id AND t.key = :'tkey'
    ORDER BY c.id LIMIT 1
), ct AS (
    INSERT INTO contacts (email, normalized_email)
    SELECT e, e FROM (SELECT :'tag' || '-' || g || '@load.example.com' AS e FROM generate_series(1, :n) g) x
    RETURNING id, email
), m AS (
    INSERT INTO transactional_messages (client_id, contact_id, template_id, email, from_email_id, from_email,
        template_key, status, idempotency_key, subject, html_body, text_body, context)
    SELECT p.client_id, ct.id, p.template_id, ct.email, 'news', 'news@example.com', p.template_key, 'queued',
           :'tag' || '-' || ct.id, 'Hi ' || ct.id, '<p>Hello ' || ct.id || '</p>', 'Hello ' || ct.id,
           jsonb_build_object('n', ct.id)
    FROM ct CROSS JOIN p
    RETURNING id, client_id, contact_id, template_id, template_key, idempotency_key
), e AS (
    INSERT INTO email_events (transactional_message_id, contact_id, client_id, event_type, metadata)
    SELECT id, contact_id, client_id, 'queued', jsonb_build_object('template_key', template_key) FROM m
)
INSERT INTO queue_messages (queue, body)
SELECT 'transactional-email',
       jsonb_build_object('contract', 'transactional-email', 'version', 1, 'transactional_message_id', id,
                          'client_id', client_id, 'idempotency_key', idempotency_key, 'contact_id', contact_id,
                          'template_id', template_id, 'template_key', template_key, 'metadata', '{}'::jsonb)::text
FROM m;
ANALYZE transactional_messages; ANALYZE queue_messages;
SQL
  record "$MODE" burndown queued "$(pg_db -c "SELECT count(*) FROM transactional_messages WHERE id > $start_id AND status = 'queued'")"
  start_dm burndown "$BURNDOWN_COMMAND"
  record "$MODE" burndown drained_after_start_s "$(wait_drained)"
  stop_dm burndown
  local sent unsent window
  read -r sent unsent window <<<"$(pg_db -F ' ' -c "
    SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status <> 'sent'),
           round(extract(epoch FROM max(updated_at) - min(sent_at))::numeric, 2)
    FROM transactional_messages WHERE id > $start_id")"
  record "$MODE" burndown sent "$sent"
  record "$MODE" burndown not_sent "$unsent"
  record "$MODE" burndown window_s "$window"
  record "$MODE" burndown burndown_emails_per_s "$(awk -v n="$sent" -v w="$window" 'BEGIN{printf "%.1f", n / w}')"
}

# --- per mode: fresh database, migrate, provision, template, scenarios -----------------------
for MODE in $MODES; do
  case "$MODE" in
    capture) MODE_ENV=() ;;
    ses)
      python3 "$HERE/fake-ses/fake_ses.py" --port "$FAKE_SES_PORT" --latency-ms "$FAKE_SES_LATENCY_MS" \
        >"$OUT/fake-ses.log" 2>&1 &
      FAKE_PID=$!
      for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$FAKE_SES_PORT/stats" >/dev/null 2>&1 && break; sleep 0.1; done
      MODE_ENV=(AWS_ENDPOINT_URL="http://127.0.0.1:$FAKE_SES_PORT" AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x
        AWS_REGION=us-east-1 DATAMAILER_SES_MAX_SEND_RATE=0)
      ;;
    *) die "unknown mode $MODE (capture|ses)" ;;
  esac
  DB="${DB_PREFIX}_$MODE"
  log "[$MODE] fresh database $DB"
  pg_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  pg_admin -c "CREATE DATABASE $DB"
  pg_admin -c "ALTER DATABASE $DB SET synchronous_commit = $SYNC_COMMIT"
  record "$MODE" all synchronous_commit "$SYNC_COMMIT"
  (dm_exec "$BIN" migrate) >"$OUT/$MODE-migrate.log" 2>&1 || die "migrate failed: $(tail -5 "$OUT/$MODE-migrate.log")"
  API_KEY=$(dm_exec "$BIN" provision --org load-org --audience load-aud --client load-client \
    --sender news=news@example.com 2>>"$OUT/$MODE-provision.log" | tail -1)
  [[ -n "$API_KEY" ]] || die "provision printed no key"
  start_dm setup serve
  curl -fsS -X PUT "http://127.0.0.1:$HTTP_PORT/api/transactional/templates/$TEMPLATE_KEY" \
    -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
    -d '{"name":"Load","subject":"Hi {{ n }}","text_body":"Hello {{ n }}, this is a load test.","html_body":"<p>Hello <b>{{ n }}</b>, this is a load test.</p>"}' \
    >"$OUT/$MODE-template.json" || die "template PUT failed"
  kill -TERM "$DM_PID"; wait "$DM_PID" || true; DM_PID=""; stop_samplers
  [[ -n "$FAKE_PID" ]] && curl -fsS -X POST "http://127.0.0.1:$FAKE_SES_PORT/reset" >/dev/null

  for s in $SCENARIOS; do
    case "$s" in
      api) scenario_api ;;
      e2e) scenario_e2e ;;
      burndown) scenario_burndown ;;
      *) die "unknown scenario $s (api|e2e|burndown)" ;;
    esac
  done
  if [[ -n "$FAKE_PID" ]]; then
    record "$MODE" fake-ses stats "$(curl -fsS "http://127.0.0.1:$FAKE_SES_PORT/stats")"
    kill -TERM "$FAKE_PID"; wait "$FAKE_PID" 2>/dev/null || true; FAKE_PID=""
  fi
  record "$MODE" all dead_lettered "$(pg_db -c "SELECT count(*) FROM queue_messages WHERE dead_lettered_at IS NOT NULL")"
  record "$MODE" all failed_rows "$(pg_db -c "SELECT count(*) FROM transactional_messages WHERE status = 'failed'")"
done

echo "loadavg_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
log "done: $OUT"
column -t -s $'\t' "$SUMMARY"
