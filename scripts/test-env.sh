#!/usr/bin/env bash
# The Python tools the tests use, in a venv of the project: moto (SQS/SES v2 server),
# cargo-lambda (Lambda runtime emulator) and cfn-lint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/cargo-lambda ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6' 'cargo-lambda>=1,<2' 'cfn-lint>=1,<2'
fi
