#!/usr/bin/env bash
# The whole test suite on a fresh machine: system tools, Python packages, lint, types, tests.
# Downloads are cached outside the clone (pip's cache, /var/cache/rymi).
set -euo pipefail
cd "$(dirname "$0")/.."
for setup in scripts/setup/*.sh; do
  [ -e "$setup" ] || continue
  echo "== setup: $setup"
  bash "$setup"
done
echo "== pip install -e .[test]"
python3 -m pip install --disable-pip-version-check -q -e '.[test]'
echo "== ruff"
python3 -m ruff check .
echo "== mypy"
python3 -m mypy
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider "$@"
