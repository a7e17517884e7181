#!/usr/bin/env bash
# espeak-ng (CLI) and sox: tests synthesize real speech with them (tests/support/speech.py).
# Test-only: the worker itself speaks through the espeakng-loader wheel and needs neither.
# Idempotent: installs only what is missing.
set -euo pipefail

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
if [ "${#missing[@]}" -eq 0 ]; then
  echo "speech tools present: espeak-ng, sox"
  exit 0
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
