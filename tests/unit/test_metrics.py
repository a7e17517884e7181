"""The event-loop lag monitor (runtime/metrics.py): buckets, percentiles, its routes."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import aiohttp

from runtime.metrics import LAG_BUCKETS_S, LoopLagMonitor, StallTracer, lag_summary
from runtime.server import Worker
from runtime.settings import WorkerSettings


def test_percentiles_come_from_the_samples_between_two_snapshots() -> None:
    monitor = LoopLagMonitor()
    for _ in range(50):
        monitor.observe(0.5)  # before the window: must not count
    before = monitor.snapshot()
    for _ in range(98):
        monitor.observe(0.0004)
    monitor.observe(0.012)
    monitor.observe(0.030)
    summary = lag_summary(before, monitor.snapshot())
    assert summary["samples"] == 100
    assert summary["p50_ms"] <= 0.5
    assert 10 < summary["p99_ms"] <= 15  # the 99th sample sits in the (10, 15] ms bucket
    assert summary["over_20ms"] == 1


def test_a_blocked_loop_shows_as_lag() -> None:
    async def scenario() -> dict[str, float | int]:
        monitor = LoopLagMonitor(interval=0.005)
        monitor.start()
        await asyncio.sleep(0.03)
        before = monitor.snapshot()
        import time

        time.sleep(0.06)  # noqa: ASYNC251 - a synchronous call that holds the loop
        await asyncio.sleep(0.03)
        await monitor.stop()
        return lag_summary(before, monitor.snapshot())

    summary = asyncio.run(scenario())
    assert summary["samples"] >= 2
    assert summary["over_20ms"] >= 1
    assert len(LAG_BUCKETS_S) + 1 == len(LoopLagMonitor().counts)


async def test_worker_serves_prometheus_and_loop_counters(tmp_path: Path) -> None:
    worker = Worker(WorkerSettings(host="127.0.0.1", port=0, data_dir=tmp_path,
                                   offline_stt_decoders=0), embedded_api=True)
    await worker.start()
    try:
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{worker.url}/metrics") as resp:
                assert resp.status == 200
                assert "rymi_event_loop_lag_seconds_bucket" in await resp.text()
            async with session.get(f"{worker.url}/metrics/loop") as resp:
                data = await resp.json()
        assert data["samples"] > 0
        assert len(data["counts"]) == len(data["buckets_s"]) + 1
    finally:
        await worker.stop(drain_timeout=1)


def _blocking_helper_for_the_tracer() -> None:
    import time

    time.sleep(0.08)  # the "slow callback" the tracer must name


def test_stall_tracer_logs_the_stack_that_held_the_loop(caplog: Any) -> None:
    tracer = StallTracer(0.02)

    async def scenario() -> None:
        monitor = LoopLagMonitor(interval=0.005, tracer=tracer)
        monitor.start()
        await asyncio.sleep(0.03)
        _blocking_helper_for_the_tracer()
        await asyncio.sleep(0.05)  # the loop is back: the tracer reports
        await monitor.stop()

    with caplog.at_level(logging.WARNING, logger="runtime.metrics"):
        asyncio.run(scenario())
    assert tracer.stalls >= 1
    report = "\n".join(tracer.reports)
    assert "event loop stalled" in report
    assert "_blocking_helper_for_the_tracer" in report
    assert any("_blocking_helper_for_the_tracer" in r.getMessage() for r in caplog.records)


def test_stall_tracer_times_garbage_collections() -> None:
    tracer = StallTracer(0.000001)  # every collection counts as a pause

    async def scenario() -> None:
        monitor = LoopLagMonitor(interval=0.005, tracer=tracer)
        monitor.start()
        gc.collect()
        await asyncio.sleep(0.05)
        await monitor.stop()

    asyncio.run(scenario())
    assert tracer.gc_pauses >= 1
    assert any("gc generation 2" in r for r in tracer.reports)


async def test_stall_tracing_is_off_unless_configured(tmp_path: Path) -> None:
    settings = WorkerSettings(host="127.0.0.1", port=0, data_dir=tmp_path,
                              offline_stt_decoders=0)
    assert settings.stall_trace_ms is None
    worker = Worker(settings, embedded_api=True)
    await worker.start()
    try:
        assert worker.loop_lag.tracer is None
    finally:
        await worker.stop(drain_timeout=1)
    traced = Worker(WorkerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "t",
                                   offline_stt_decoders=0, stall_trace_ms=25),
                    embedded_api=True)
    await traced.start()
    try:
        assert traced.loop_lag.tracer is not None
        assert traced.loop_lag.tracer.threshold_s == 0.025
    finally:
        await traced.stop(drain_timeout=1)


def test_stall_trace_setting_comes_from_the_environment(monkeypatch: Any, tmp_path: Path) -> None:
    import pydantic
    import pytest

    monkeypatch.setenv("RYMI_STALL_TRACE_MS", "20")
    assert WorkerSettings(data_dir=tmp_path).stall_trace_ms == 20
    monkeypatch.setenv("RYMI_STALL_TRACE_MS", "0")
    with pytest.raises(pydantic.ValidationError):
        WorkerSettings(data_dir=tmp_path)
