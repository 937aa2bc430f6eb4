#!/usr/bin/env bash
# Makes sure a Postgres answers on 127.0.0.1:5432, starting the machine's cluster if it is down.
set -euo pipefail
if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "starting the local Postgres cluster" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && exit 0; sleep 0.2; done
fi
echo "error: no Postgres on 127.0.0.1:5432 and none could be started (install postgresql, or set DATABASE_URL)" >&2
exit 1
