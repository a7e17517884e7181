#!/usr/bin/env bash
# Builds livekit-server (used by tests/livekit) from the Go module proxy into a cache outside the
# clone. Idempotent: does nothing when the binary of the pinned version is already present.
set -euo pipefail

VERSION="${LIVEKIT_SERVER_VERSION:-v1.13.5}"
CACHE="${RYMI_CACHE_DIR:-/var/cache/rymi}"
BIN_DIR="$CACHE/bin"
TARGET="$BIN_DIR/livekit-server"
STAMP="$TARGET.version"

# the LiveKit tests run server, workers and participants in a loopback-only network
# namespace: they need ip (iproute2), unshare and nsenter (util-linux)
if ! command -v ip >/dev/null 2>&1 || ! command -v nsenter >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 util-linux
  else
    echo "livekit tests need ip (iproute2), unshare and nsenter (util-linux)" >&2
  fi
fi

if [ -x "$TARGET" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  echo "livekit-server $VERSION already at $TARGET"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go; do
    [ -x "$candidate" ] && PATH="$(dirname "$candidate"):$PATH" && break
  done
fi
command -v go >/dev/null 2>&1 || { echo "livekit-server: Go (>= 1.26) not found" >&2; exit 1; }

GO_DIR="$CACHE/go"
mkdir -p "$BIN_DIR" "$GO_DIR"
WORK="$(mktemp -d "$GO_DIR/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "building livekit-server $VERSION (go install; takes a few minutes the first time)"
env GOPATH="$GO_DIR/path" GOMODCACHE="$GO_DIR/mod" GOCACHE="$GO_DIR/build-cache" \
  GOBIN="$WORK" GOFLAGS="-modcacherw" GOTOOLCHAIN="${GOTOOLCHAIN:-local}" \
  go install "github.com/livekit/livekit-server/cmd/server@$VERSION"

install -m 0755 "$WORK/server" "$TARGET.tmp"
mv -f "$TARGET.tmp" "$TARGET"
echo "$VERSION" > "$STAMP"
echo "livekit-server $VERSION installed at $TARGET"
