#!/usr/bin/env bash
# LiveKit Agents' Deepgram/OpenAI/Silero plugins in a virtualenv of their own (default
# /var/cache/rymi/venv-livekit-agents, or $RYMI_LIVEKIT_AGENTS_VENV), for the benchmarks'
# "livekit" scenario only. The venv sees the main environment's packages, so the agent
# runs the same livekit / livekit-agents as the worker; only the plugins (and onnxruntime)
# live in the venv, and nothing the worker pins changes. Silero's ONNX model ships in the
# plugin's wheel: nothing is downloaded when the agent runs. Idempotent.
set -euo pipefail
VENV="${RYMI_LIVEKIT_AGENTS_VENV:-/var/cache/rymi/venv-livekit-agents}"
REQS="$(cd "$(dirname "$0")" && pwd)/requirements-livekit-agents.txt"
want="$(grep -o 'livekit-plugins-silero==[0-9.]*' "$REQS" | sed 's/.*==//')"
if [ -x "$VENV/bin/python" ] && \
   [ "$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('livekit-plugins-silero'))" 2>/dev/null)" = "$want" ]; then
  echo "livekit-agents plugins $want already in $VENV"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install -q -r "$REQS"
echo "livekit-agents plugins $want installed in $VENV"
