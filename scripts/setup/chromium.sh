#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser): Playwright drives it through
# executable_path, so `playwright install` (a run-time browser download) is never needed.
# Idempotent: does nothing when chromium and the fonts for screenshots are present.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core fonts-liberation)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "chromium already installed: $(command -v chromium)"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v chromium >/dev/null
