"""The benchmark harness runs end to end (a few seconds of it); no latency is asserted.

A real worker subprocess (``rymi-worker start`` against the local API process), the
provider stand-ins in their own process, Twilio callers on 127.0.0.1: one call with one
turn, then a two-call capacity step of two seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.__main__ import main, report
from tests.support.speech import require_tools

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools()


def test_quick_pieces_run_and_write_results(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    affinity = os.sched_getaffinity(0)
    code = main([
        "--frameworks", "rymi", "--scenarios", "latency,capacity", "--levels", "1",
        "--turns", "1", "--capacity-rymi", "2", "--window", "2", "--out", str(tmp_path),
        "--name", "smoke", "--no-progress", "--no-plots",
    ])
    assert code == 0
    assert os.sched_getaffinity(0) == affinity  # the test process is not left pinned
    results = json.loads((tmp_path / "smoke.json").read_text())
    (run,) = results["latency"]
    assert run["framework"] == "rymi"
    assert run["answered"] == 1 and run["error_count"] == 0
    turn = run["turns"][0]
    assert turn["voice_to_voice_ms"] > 0
    assert "overhead_ms" in turn  # the VAD decision was found in the worker's events
    (capacity,) = results["capacity"]
    (step,) = capacity["steps"]
    assert step["calls"] == 2 and step["loop_lag"]["samples"] > 0
    assert step["cpu_core_fraction"] > 0 and step["rss_mb"] > 0
    out = capsys.readouterr().out
    assert "Voice-to-voice" in out and "Capacity of one rymi process" in out
    assert out.strip().splitlines()[-1].startswith("raw numbers:")


def test_report_and_plots_from_saved_results(tmp_path: Path) -> None:
    results = {
        "delays_s": {"stt": 0.1, "llm": 0.2, "tts": 0.1},
        "standin_floor_ms": {"stt": 1.0, "llm": 1.0, "tts": 1.0},
        "latency": [{
            "framework": fw, "calls": 1, "answered": 2, "expected": 2, "error_count": 0,
            "load_generator_lag_p99_ms": 1.0, "cold_start_ms": [50.0],
            "turns": [{"voice_to_voice_ms": 700.0 + i, "overhead_ms": 5.0 + i,
                       "endpoint_silence_ms": 340.0} for i in range(2)],
            "summary": {k: {"n": 2, "p50": 1.0, "p95": 2.0, "p99": 2.0}
                        for k in ("voice_to_voice_ms", "endpoint_silence_ms", "overhead_ms",
                                  "cold_start_ms")},
        } for fw in ("rymi", "pipecat")],
        "barge_in": [], "capacity": [],
    }
    text = report(results)
    assert "overhead p95 at 1 call(s) ≤ 5 ms: 2.0 ms [met]" in text
    pytest.importorskip("matplotlib")
    from benchmarks.plots import write_plots

    names = {p.name for p in write_plots(results, tmp_path)}
    assert {"latency_overhead_cdf.png", "latency_v2v_cdf.png", "cold_start_cdf.png"} <= names
