"""A real livekit-server (built by scripts/setup/livekit-server.sh) confined to loopback.

The configuration keeps signalling and media on 127.0.0.1 (option names checked against
livekit-server v1.13.5: ``pkg/config/config.go`` and mediatransportutil ``rtcconfig``):

- ``bind_addresses: [127.0.0.1]``: signalling and the HTTP API;
- ``rtc.node_ip: 127.0.0.1`` with ``use_external_ip: false``: the advertised address; no
  STUN lookup of a public address;
- ``rtc.udp_port``: one UDP mux port, bound per local IP that passes ``rtc.ips`` (only
  127.0.0.1/32) and ``enable_loopback_candidate: true`` (otherwise loopback is skipped);
- ``rtc.tcp_port: 0``: no ICE/TCP, whose listener would bind every interface;
- ``rtc.stun_servers``: a loopback address, because without any STUN server configured the
  server hands clients Google's public STUN servers in the join response.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.livekit.netns import NetNs, inside

DEFAULT_BINARY = "/var/cache/rymi/bin/livekit-server"


def server_binary() -> str:
    path = os.environ.get("RYMI_LIVEKIT_SERVER_BIN", DEFAULT_BINARY)
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"livekit-server not found at {path}: run scripts/setup/livekit-server.sh"
        )
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_config(
    *, port: int, udp_port: int, stun_port: int, api_key: str, api_secret: str
) -> str:
    return f"""\
port: {port}
bind_addresses: [127.0.0.1]
keys:
  {api_key}: {api_secret}
rtc:
  node_ip: 127.0.0.1
  use_external_ip: false
  udp_port: {udp_port}
  tcp_port: 0
  enable_loopback_candidate: true
  ips:
    includes: [127.0.0.1/32]
  stun_servers: ["127.0.0.1:{stun_port}"]
room:
  empty_timeout: 30
  departure_timeout: 5
logging:
  level: info
"""


@dataclass
class LiveKitServer:
    workdir: Path
    netns: NetNs | None
    api_key: str = field(default_factory=lambda: "APIrymi" + secrets.token_hex(4))
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    port: int = 0
    udp_port: int = 0
    stun_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "livekit-server.log"

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> None:
        """Start (or start again on the same ports) and wait until it answers."""
        if not self.port:
            with inside(self.netns):
                self.port = free_port()
                self.udp_port = free_port(socket.SOCK_DGRAM)
                self.stun_port = free_port(socket.SOCK_DGRAM)
        config = self.workdir / "livekit.yaml"
        config.write_text(
            render_config(
                port=self.port,
                udp_port=self.udp_port,
                stun_port=self.stun_port,
                api_key=self.api_key,
                api_secret=self.api_secret,
            )
        )
        argv = [server_binary(), "--config", str(config)]
        if self.netns is not None:
            argv = self.netns.command(argv)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        with inside(self.netns):
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"livekit-server exited:\n{self.log_tail()}")
                try:
                    with urllib.request.urlopen(self.http_url, timeout=1) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    time.sleep(0.1)
        raise RuntimeError(f"livekit-server did not start:\n{self.log_tail()}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server; ``kill`` makes it a crash (no goodbye to connected workers)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        # under nsenter, the server is nsenter's exec'd image: same pid
        return self.process.pid
