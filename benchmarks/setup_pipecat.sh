#!/usr/bin/env bash
# Pipecat in a virtualenv of its own (default /var/cache/rymi/venv-pipecat, or
# $RYMI_PIPECAT_VENV), for `python -m benchmarks` only. Idempotent: does nothing when the
# venv already has the pinned version. Pipecat ships its Silero VAD model in the wheel, so
# nothing is downloaded when the bot runs.
set -euo pipefail
VENV="${RYMI_PIPECAT_VENV:-/var/cache/rymi/venv-pipecat}"
REQS="$(cd "$(dirname "$0")" && pwd)/requirements-pipecat.txt"
want="$(grep -o 'pipecat-ai\[[^]]*\]==[0-9.]*' "$REQS" | sed 's/.*==//')"
if [ -x "$VENV/bin/python" ] && \
   [ "$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('pipecat-ai'))" 2>/dev/null)" = "$want" ]; then
  echo "pipecat $want already in $VENV"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r "$REQS"
echo "pipecat $want installed in $VENV"
