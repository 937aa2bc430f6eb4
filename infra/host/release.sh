#!/usr/bin/env bash
# Host release for the datamailer web host (run as root over SSM Session Manager / Run Command).
#
#   release.sh --version V [--from-s3 s3://bucket/key]   install/activate release V
#   release.sh --rollback [--version V]                    re-activate the previous release (or the
#                                                          installed release V); no migrations
#   release.sh --render-only                               only re-render /etc/datamailer/environment
#
# A release: render /etc/datamailer/environment from the CloudFormation stack outputs, the app
# database secret and SSM parameters under /<project>/<environment>/web/; invoke the stack's
# migrate Lambda function (migrations, then the datamailer_app and datamailer_worker roles, with
# the master credential only that function may read) and stop on its error; switch
# /opt/datamailer/current; restart datamailer and caddy; wait for /health/. A rollback only
# switches the symlink back to the previous release and restarts: no migrations (they are
# forward-only: the previous binary must work with the newer schema, see docs/operations.md).
#
# Where the host belongs comes from /etc/datamailer/deploy.env (written by the template's UserData):
# STACK_NAME, AWS_REGION, DATAMAILER_ENVIRONMENT, DATAMAILER_PROJECT, DATAMAILER_DOMAIN.
set -euo pipefail

ROOT=/opt/datamailer
ENV_FILE=/etc/datamailer/environment
DEPLOY_ENV=/etc/datamailer/deploy.env

log() { printf 'release: %s\n' "$*" >&2; }
die() { printf 'release: error: %s\n' "$*" >&2; exit 1; }

version="" from_s3="" mode=release
while [[ $# -gt 0 ]]; do
  case "$1" in
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --from-s3) from_s3=${2:?--from-s3 needs an s3:// URI}; shift 2 ;;
    --rollback) mode=rollback; shift ;;
    --render-only) mode=render; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
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
  # The only secret this host may read; the master one is the migrate function's alone.
  app_secret=$(secret "$(output AppDatabaseSecretArn)")
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

# Migrations and the login roles run in the migrate Lambda function (same artifact, the stack's
# LambdaArtifactKey, so deploy the stack with the new artifact before releasing its web binary):
# it alone may read the master secret, and holds it only while an invocation runs. The job is
# idempotent; an error fails the invocation and so the release, before anything is switched.
run_migrations() {
  local fn answer meta status err body
  fn=$(output MigrateFunctionName)
  answer=$(mktemp)
  # One attempt (a CLI retry of a slow invoke would queue behind reserved concurrency 1) and a
  # read timeout past the function's 300 s timeout.
  if ! meta=$(AWS_MAX_ATTEMPTS=1 aws lambda invoke --function-name "$fn" \
      --cli-binary-format raw-in-base64-out --payload '{"source":"release.sh"}' \
      --cli-read-timeout 330 --output json "$answer"); then
    rm -f "$answer"
    die "could not invoke the migrate function $fn (see above)"
  fi
  body=$(cat "$answer")
  rm -f "$answer"
  status=$(jq -r '.StatusCode // empty' <<<"$meta")
  err=$(jq -r '.FunctionError // empty' <<<"$meta")
  if [[ $status != 200 || -n $err ]]; then
    die "the migrate function $fn failed (${err:-status $status}): $(jq -r '.errorMessage // .' <<<"$body" 2>/dev/null || printf '%s' "$body"); its log: aws logs tail /aws/lambda/$fn --since 15m"
  fi
  jq -e '(.applied | type) == "array" and (.roles | length) == 2' <<<"$body" >/dev/null 2>&1 \
    || die "unexpected answer from the migrate function $fn: $body"
  log "migrations: applied $(jq -c .applied <<<"$body") of $(jq .pending_before <<<"$body") pending; roles $(jq -r '.roles | join(", ")' <<<"$body") in place"
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
    if [[ -n $version ]]; then
      [[ $version =~ ^[A-Za-z0-9._-]+$ ]] || die "bad version: $version"
      prev=$ROOT/releases/$version
      [[ -x $prev/datamailer ]] || die "$prev/datamailer missing (installed releases: $(ls "$ROOT/releases" | tr '\n' ' '))"
    else
      prev=$(readlink "$ROOT/previous" || true)
      [[ -n $prev && -x $prev/datamailer ]] || die "no previous release recorded in $ROOT/previous"
    fi
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
    run_migrations
    switch_to "$dir"
    restart_and_check
    ;;
esac
