#!/usr/bin/env bash
# The Python tools the tests use, in a venv of the project: moto (SQS/SES v2 server),
# cargo-lambda (Lambda runtime emulator) and cfn-lint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/cargo-lambda ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6' 'cargo-lambda>=1,<2' 'cfn-lint>=1,<2'
fi
# Prometheus and promtool (tests/dashboards_prometheus.rs, deploy/tests/dashboards.rs), from the
# distribution's package when missing.
if [ ! -x /usr/bin/prometheus ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
fi
