#!/usr/bin/env bash
# Host release for the datamailer web host (run as root over SSM Session Manager / Run Command).
#
#   release.sh --version V [--from-s3 s3://bucket/key]   install/activate release V
#   release.sh --rollback                                  re-activate the previous release
#   release.sh --render-only                               only re-render /etc/datamailer/environment
#
# A release: render /etc/datamailer/environment from the CloudFormation stack outputs, Secrets
# Manager and SSM parameters under /<project>/<environment>/web/; create or update the Postgres
# roles datamailer_app (web) and datamailer_worker (Lambda workers) idempotently; run
# `datamailer migrate` as the master user; switch /opt/datamailer/current; restart datamailer and
# caddy; wait for /health/. A rollback only switches the symlink back and restarts (migrations are
# forward-only: the previous binary must work with the newer schema, see docs/operations.md).
#
# Where the host belongs comes from /etc/datamailer/deploy.env (written by the template's UserData):
# STACK_NAME, AWS_REGION, DATAMAILER_ENVIRONMENT, DATAMAILER_PROJECT, DATAMAILER_DOMAIN.
set -euo pipefail

ROOT=/opt/datamailer
ENV_FILE=/etc/datamailer/environment
DEPLOY_ENV=/etc/datamailer/deploy.env
APP_CONNECTION_LIMIT=${APP_CONNECTION_LIMIT:-12}      # web pool (8) + operator commands
WORKER_CONNECTION_LIMIT=${WORKER_CONNECTION_LIMIT:-24} # sum(reserved concurrency x 2) = 20, + margin

log() { printf 'release: %s\n' "$*" >&2; }
die() { printf 'release: error: %s\n' "$*" >&2; exit 1; }

version="" from_s3="" mode=release
while [[ $# -gt 0 ]]; do
  case "$1" in
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --from-s3) from_s3=${2:?--from-s3 needs an s3:// URI}; shift 2 ;;
    --rollback) mode=rollback; shift ;;
    --render-only) mode=render; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ $EUID -eq 0 ]] || die "run as root"
[[ -r $DEPLOY_ENV ]] || die "$DEPLOY_ENV missing (written by the stack's UserData)"
# shellcheck disable=SC1090
source "$DEPLOY_ENV"
: "${STACK_NAME:?}" "${AWS_REGION:?}" "${DATAMAILER_ENVIRONMENT:?}" "${DATAMAILER_PROJECT:?}" "${DATAMAILER_DOMAIN:?}"
export AWS_REGION AWS_DEFAULT_REGION=$AWS_REGION

outputs_json=""
output() { # output NAME -> the stack output's value (fails if missing)
  local v
  v=$(jq -r --arg k "$1" '.[] | select(.OutputKey == $k) | .OutputValue' <<<"$outputs_json")
  [[ -n $v && $v != null ]] || die "stack $STACK_NAME has no output $1 (is it CREATE_COMPLETE?)"
  printf '%s' "$v"
}
secret() { aws secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text; }
# TLS to RDS: verify the server against the RDS CA bundle when the image holds it (see
# image-recipe.md), else encrypt without verifying (RDS forces TLS either way).
RDS_CA_BUNDLE=${RDS_CA_BUNDLE:-/etc/datamailer/rds-ca.pem}
if [ -r "$RDS_CA_BUNDLE" ]; then
  pg_tls="sslmode=verify-full&sslrootcert=$RDS_CA_BUNDLE"
else
  pg_tls="sslmode=require"
fi

pg_url() { # pg_url SECRET_JSON -> postgres://user:pass@host:port/db?<tls> (password URL-encoded)
  jq -r --arg host "$db_host" --arg port "$db_port" --arg db "$db_name" --arg tls "$pg_tls" \
    '"postgres://\(.username | @uri):\(.password | @uri)@\($host):\($port)/\($db)?\($tls)"' <<<"$1"
}

load_stack() {
  outputs_json=$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query 'Stacks[0].Outputs' --output json)
  db_host=$(output DatabaseEndpoint)
  db_port=$(output DatabasePort)
  db_name=$(output DatabaseName)
  app_secret=$(secret "$(output AppDatabaseSecretArn)")
  worker_secret=$(secret "$(output WorkerDatabaseSecretArn)")
  master_secret=$(secret "$(output DatabaseMasterSecretArn)")
}

render_environment() {
  local tmp
  tmp=$(mktemp /etc/datamailer/.environment.XXXXXX)
  {
    echo "# Rendered by release.sh from stack $STACK_NAME at $(date -u +%FT%TZ). Do not edit: re-run release.sh --render-only."
    echo "DATABASE_URL=$(pg_url "$app_secret")"
    echo "DATAMAILER_DB_MAX_CONNECTIONS=8"
    echo "DATAMAILER_HTTP_ADDR=127.0.0.1:8000"
    echo "PUBLIC_BASE_URL=$(output PublicBaseUrl)"
    echo "DEFAULT_FROM_EMAIL=$(output DefaultFromEmail)"
    echo "AWS_REGION=$AWS_REGION"
    echo "DATAMAILER_QUEUE_BACKEND=sqs"
    echo "AWS_SES_CONFIGURATION_SET=$(output SesConfigurationSetName)"
    local id env
    for pair in TransactionalEmail:TRANSACTIONAL_EMAIL CampaignEmail:CAMPAIGN_EMAIL \
                SesWebhooks:SES_WEBHOOKS EmailEvents:EMAIL_EVENTS; do
      id=${pair%%:*} env=${pair#*:}
      echo "SQS_${env}_QUEUE_URL=$(output "${id}QueueUrl")"
      echo "SQS_${env}_DLQ_URL=$(output "${id}DlqUrl")"
      # `datamailer pause`/`resume` switch the queue's Lambda mapping too.
      echo "DATAMAILER_${env}_EVENT_SOURCE_MAPPING=$(output "${id}EventSourceMappingId")"
    done
    echo "RUST_LOG=info"
    # Operator overrides and extra settings: SSM parameters /<project>/<env>/web/NAME (SecureString ok).
    aws ssm get-parameters-by-path --path "/${DATAMAILER_PROJECT}/${DATAMAILER_ENVIRONMENT}/web/" \
      --recursive --with-decryption --output json \
      | jq -r '.Parameters[] | "\(.Name | split("/") | last)=\(.Value)"'
  } >"$tmp"
  chown root:datamailer "$tmp"
  chmod 0640 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
  log "rendered $ENV_FILE"

  # Caddy's domain and the CloudWatch agent's log groups.
  install -d -m 0755 /etc/systemd/system/caddy.service.d
  printf '[Service]\nEnvironment=DATAMAILER_DOMAIN=%s\n' "$DATAMAILER_DOMAIN" \
    >/etc/systemd/system/caddy.service.d/datamailer.conf
  if [[ -r $ROOT/share/amazon-cloudwatch-agent.json ]]; then
    sed -e "s|@WEB_LOG_GROUP@|$(output WebLogGroupName)|g" \
        -e "s|@WEB_METRICS_LOG_GROUP@|$(output WebMetricsLogGroupName)|g" \
        "$ROOT/share/amazon-cloudwatch-agent.json" >/opt/aws/amazon-cloudwatch-agent/etc/datamailer.json
    /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 \
      -c file:/opt/aws/amazon-cloudwatch-agent/etc/datamailer.json -s >/dev/null
  fi
}

# Idempotent: roles are created if missing and their passwords/limits/grants re-applied every time.
# Migrations run as the master user, which therefore owns the tables; default privileges make
# tables created by later migrations visible to both roles without another grant.
ensure_roles() {
  local master_user app_pw worker_pw
  master_user=$(jq -r .username <<<"$master_secret")
  app_pw=$(jq -r .password <<<"$app_secret")
  worker_pw=$(jq -r .password <<<"$worker_secret")
  PGPASSWORD=$(jq -r .password <<<"$master_secret") psql "host=$db_host port=$db_port dbname=$db_name user=$master_user ${pg_tls//&/ }" \
    -v ON_ERROR_STOP=1 -q -X \
    -v app_pw="$app_pw" -v worker_pw="$worker_pw" -v db="$db_name" -v owner="$master_user" \
    -v app_limit="$APP_CONNECTION_LIMIT" -v worker_limit="$WORKER_CONNECTION_LIMIT" <<'SQL'
SELECT 'CREATE ROLE datamailer_app LOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'datamailer_app') \gexec
SELECT 'CREATE ROLE datamailer_worker LOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'datamailer_worker') \gexec
ALTER ROLE datamailer_app    WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_pw'    CONNECTION LIMIT :app_limit;
ALTER ROLE datamailer_worker WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'worker_pw' CONNECTION LIMIT :worker_limit;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO datamailer_app, datamailer_worker;
GRANT USAGE ON SCHEMA public TO datamailer_app, datamailer_worker;
-- web: the API reads and writes every table.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO datamailer_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO datamailer_app;
-- workers: read and write rows, never DELETE/TRUNCATE, never DDL.
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO datamailer_worker;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO datamailer_worker;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO datamailer_app;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE ON TABLES TO datamailer_worker;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO datamailer_app, datamailer_worker;
SQL
  log "roles datamailer_app and datamailer_worker in place"
}

migrate() { # migrate BINARY
  DATABASE_URL=$(pg_url "$master_secret") "$1" migrate
  log "migrations applied"
}

switch_to() { # switch_to RELEASE_DIR
  local target=$1 prev
  prev=$(readlink "$ROOT/current" || true)
  if [[ -n $prev && $prev != "$target" ]]; then
    ln -sfn "$prev" "$ROOT/previous.tmp" && mv -Tf "$ROOT/previous.tmp" "$ROOT/previous"
  fi
  ln -sfn "$target" "$ROOT/current.tmp" && mv -Tf "$ROOT/current.tmp" "$ROOT/current"
  log "current -> $target"
}

restart_and_check() {
  systemctl daemon-reload
  systemctl restart datamailer
  systemctl restart caddy
  for _ in $(seq 1 30); do
    if curl -fsS -o /dev/null http://127.0.0.1:8000/health/; then
      log "healthy: $(readlink "$ROOT/current")"
      return 0
    fi
    sleep 1
  done
  journalctl -u datamailer -n 30 --no-pager >&2 || true
  die "datamailer did not become healthy in 30 s; consider: release.sh --rollback"
}

case $mode in
  render)
    load_stack
    render_environment
    ;;
  rollback)
    prev=$(readlink "$ROOT/previous" || true)
    [[ -n $prev && -x $prev/datamailer ]] || die "no previous release recorded in $ROOT/previous"
    load_stack
    render_environment
    switch_to "$prev"
    restart_and_check
    ;;
  release)
    [[ -n $version ]] || die "--version is required (or --rollback / --render-only)"
    [[ $version =~ ^[A-Za-z0-9._-]+$ ]] || die "bad version: $version"
    dir=$ROOT/releases/$version
    if [[ -n $from_s3 ]]; then
      install -d -m 0755 "$dir"
      aws s3 cp --only-show-errors "$from_s3" "$dir/datamailer.download"
      chmod 0755 "$dir/datamailer.download" && mv -f "$dir/datamailer.download" "$dir/datamailer"
    fi
    [[ -x $dir/datamailer ]] || die "$dir/datamailer missing (bake it into the AMI or pass --from-s3)"
    load_stack
    render_environment
    migrate "$dir/datamailer"
    ensure_roles
    switch_to "$dir"
    restart_and_check
    ;;
esac
