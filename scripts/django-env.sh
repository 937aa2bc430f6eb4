#!/usr/bin/env bash
# The original's template engine for the template corpus test: a Python 3.12 venv with the
# Django version the original locks (6.0.5), in .venv-django. Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
DJANGO_VERSION=6.0.5
venv=.venv-django
if ! "$venv/bin/python" -c "import django, sys; sys.exit(django.get_version() != '$DJANGO_VERSION')" 2>/dev/null; then
  python312=""
  # pyenv's shim answers for python3.12 even when 3.12 is not the selected version, so try
  # pyenv's own install first, then a system python3.12.
  for candidate in "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
    if [ -x "$candidate" ] && "$candidate" -c 'import venv' 2>/dev/null; then python312=$candidate; break; fi
  done
  if [ -z "$python312" ]; then
    echo "django-env: Python 3.12 not found (pyenv install 3.12, or apt-get install python3.12)" >&2
    exit 1
  fi
  rm -rf "$venv"
  "$python312" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "django==$DJANGO_VERSION"
fi
echo "$PWD/$venv/bin/python"
