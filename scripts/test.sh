#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test against a real
# Postgres and a real SQS/SES-compatible server (moto). Under CI=true a missing service fails
# the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-postgres.sh
scripts/test-env.sh

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$port" > target/moto.log 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
  sleep 0.1
done
export DATAMAILER_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
export DATAMAILER_TEST_CARGO_LAMBDA="$PWD/.venv/bin/cargo-lambda"
# The original's Django, for the template corpus test (core/tests/django_corpus.rs).
DATAMAILER_TEST_DJANGO_PYTHON="$(scripts/django-env.sh)"
export DATAMAILER_TEST_DJANGO_PYTHON

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The AWS template: our own offline checks, then cfn-lint.
cargo run -q --bin datamailer -- validate-infra
.venv/bin/cfn-lint infra/cloudformation/datamailer-mvp.json
# The Lambda artifact the emulator test runs (tests/lambda_bootstrap.rs): dev profile on the
# host toolchain, so it reuses this build; the script still checks glibc <= 2.34 (AL2023).
# The local server's certificate stands in for the RDS CA bundle, so the emulator test's
# function connects with verify-full through the bundled CA, as on AWS.
LAMBDA_PROFILE=dev LAMBDA_COMPILER=cargo RDS_CA_BUNDLE=/etc/ssl/certs/ssl-cert-snakeoil.pem \
  scripts/lambda-artifact.sh
export DATAMAILER_TEST_LAMBDA_ARTIFACT="$PWD/dist/datamailer-lambda-x86_64.zip"
cargo test --workspace --no-fail-fast
