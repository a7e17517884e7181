"""`rymi-worker` as a user runs it: a real process, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def start(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "dev", "--port", "0", *args],
        env={
            **os.environ,
            "RYMI_DATA_DIR": str(tmp_path / "data"),
            "RYMI_OFFLINE_STT_DECODERS": "0",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("worker did not start:\n" + "".join(lines))


def test_dev_starts_offline_prints_its_key_and_drains_on_sigterm(tmp_path: Path) -> None:
    proc, url = start(tmp_path)
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            assert resp.status == 200
        key = (tmp_path / "data" / "dev-api-key").read_text().strip()
        assert key.startswith("rymi_")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stdout is not None
        assert f"dev API key (saved in {tmp_path / 'data'}): {key}" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_invalid_settings_exit_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "dev", "--port", "99999"],
        env={**os.environ, "RYMI_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "port" in result.stderr and "invalid settings" in result.stderr


def test_start_requires_an_api(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RYMI_API")}
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "start"],
        env={**env, "RYMI_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "RYMI_API_URL" in result.stderr


def test_bench_passes_its_options_to_the_suite_from_any_directory(tmp_path: Path) -> None:
    """`rymi-worker bench` finds the checkout's suite even when run elsewhere, and every
    option after `bench` reaches the suite's own parser (clear error, exit 2)."""
    cli = [sys.executable, "-c", "import sys; from runtime.cli import main; sys.exit(main())"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    shown = subprocess.run(
        [*cli, "bench", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "usage: python -m benchmarks" in shown.stdout and "--frameworks" in shown.stdout
    refused = subprocess.run(
        [*cli, "bench", "--frameworks", "nope", "--no-progress"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2
    assert "unknown framework(s): nope" in refused.stdout + refused.stderr
