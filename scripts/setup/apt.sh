#!/usr/bin/env bash
# Debian tools the tests need: espeak-ng synthesizes real speech and sox converts it
# (tests/support/speech.py; the VAD tests measure against it). Test-only: the worker
# itself needs neither. Idempotent: does nothing when both commands exist, and runs
# `apt-get update` only when the package lists do not know a package or are stale.
set -euo pipefail

declare -A PACKAGE_OF=([espeak-ng]=espeak-ng [sox]=sox)
missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$cmd]}")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "apt: espeak-ng and sox already installed"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

has_candidate() {
  local candidate
  candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

updated=0
for pkg in "${missing[@]}"; do
  if ! has_candidate "$pkg"; then
    $SUDO apt-get update -qq
    updated=1
    break
  fi
done

echo "apt: installing ${missing[*]}"
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  # stale package lists (the mirror moved on): refresh once and retry
  [ "$updated" -eq 1 ] && exit 1
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v espeak-ng >/dev/null && command -v sox >/dev/null
