"""Real processes for tests: the stand-alone local API and `rymi-worker` subprocesses.

Output goes to a log file (never a pipe that could fill up and stall the process); the
address is read from the "listening on" line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (http://\S+)")


class Process:
    """One child process with its log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self, timeout: float = 60.0) -> str:
        self.starts += 1
        log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = _LISTENING.search(text)
            if match:
                self.url = match.group(1)
                return self.url
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it does not go)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def api_process(data_dir: Path, key: str, *, port: int = 0, log_dir: Path | None = None,
                webhook_backoff_s: float = 0.5,
                webhook_hosts: tuple[str, ...] = ("127.0.0.1",)) -> Process:
    """``python -m runtime.local_api`` on loopback; ``port`` 0 picks one at first start
    (restart on the same port with ``proc.argv`` updated by :func:`pin_port`)."""
    argv = [sys.executable, "-m", "runtime.local_api", "--host", "127.0.0.1", "--port",
            str(port), "--data-dir", str(data_dir), "--key", key, "--log-level", "warning",
            "--webhook-backoff-s", str(webhook_backoff_s)]
    for host in webhook_hosts:  # tests never send traffic off loopback
        argv += ["--webhook-allow-host", host]
    return Process("api", argv, log_dir or data_dir, dict(os.environ))


def pin_port(proc: Process) -> None:
    """Restarts of ``proc`` reuse the port it got on its first start."""
    port = proc.url.rsplit(":", 1)[1]
    i = proc.argv.index("--port")
    proc.argv[i + 1] = port


def worker_process(name: str, data_dir: Path, *, api_url: str, key: str, log_dir: Path,
                   port: int = 0, **env: str) -> Process:
    """``rymi-worker start`` against ``api_url`` (a hosted-mode worker)."""
    argv = [sys.executable, "-m", "runtime.cli", "start", "--port", str(port),
            "--data-dir", str(data_dir)]
    full_env = {
        **os.environ,
        "RYMI_API_URL": api_url,
        "RYMI_API_KEY": key,
        "RYMI_WORKER_ID": name,
        "RYMI_OFFLINE_STT_DECODERS": "1",
        "RYMI_LOG_LEVEL": "warning",
        **env,
    }
    return Process(name, argv, log_dir, full_env)
