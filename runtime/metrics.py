"""Process health the operator (and the benchmarks) can read: event-loop lag, ``/metrics``.

Every call of a worker shares one asyncio loop, so the loop's lateness is the one number
that says whether the process keeps up: a 20 ms audio frame that waits 30 ms for the loop
is a glitch on every call at once. :class:`LoopLagMonitor` measures it cheaply (one timer
every 10 ms, how late it fires) into fixed buckets; ``GET /metrics`` serves it with every
other Prometheus metric of the process (carrier counters, …).

The monitor itself uses only the standard library, so the benchmark's Pipecat bot (run
in another virtualenv) measures its own loop with the same code.

:class:`StallTracer` (opt-in, ``RYMI_STALL_TRACE_MS``) answers the next question: *what*
held the loop. A CPU sampler averages stalls away; the tracer's watchdog thread samples
the loop thread's stack only while a tick is overdue, and a ``gc`` callback times the
collector's pauses (which hold the GIL, so no thread can sample them).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

#: Upper bounds of the lag buckets, seconds (the last bucket is everything above).
LAG_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
)


class LoopLagMonitor:
    """How late the running loop wakes a timer that asks for ``interval`` seconds.

    ``counts[i]`` counts samples with lag ≤ ``LAG_BUCKETS_S[i]`` (not cumulative); the
    last entry counts the rest. Readers take two :meth:`snapshot` s and diff them, so no
    reset is ever needed and several readers do not disturb each other.
    """

    def __init__(self, interval: float = 0.01, histogram: Any = None,
                 tracer: StallTracer | None = None) -> None:
        self.interval = interval
        self.tracer = tracer
        self.counts = [0] * (len(LAG_BUCKETS_S) + 1)
        self.samples = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self._histogram = histogram  # optional prometheus_client Histogram
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")
            if self.tracer is not None:
                self.tracer.start(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if self.tracer is not None:
            self.tracer.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def observe(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.counts[bisect.bisect_left(LAG_BUCKETS_S, lag)] += 1
        self.samples += 1
        self.total_s += lag
        self.max_s = max(self.max_s, lag)
        if self._histogram is not None:
            self._histogram.observe(lag)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tracer = self.tracer
        while True:
            expected = loop.time() + self.interval
            if tracer is not None:
                tracer.beat()
            await asyncio.sleep(self.interval)
            self.observe(loop.time() - expected)

    def snapshot(self) -> dict[str, Any]:
        """Counters so far (JSON-ready); :func:`lag_summary` turns two into percentiles."""
        return {
            "buckets_s": list(LAG_BUCKETS_S),
            "counts": list(self.counts),
            "samples": self.samples,
            "total_s": self.total_s,
            "max_s": self.max_s,
            "at": time.time(),
        }


class StallTracer:
    """Logs where the loop thread was whenever the loop misses a tick by > ``threshold_s``.

    The lag monitor calls :meth:`beat` on every tick; a daemon thread polls a few times per
    threshold and, while the next beat is overdue, samples the loop thread's stack
    (``sys._current_frames()``). When the loop is back it logs one warning per stall: its
    length, the most frequent stacks, and any garbage-collector pause inside it. Costs the
    loop one ``time.monotonic()`` per tick and one Python call per collection (the ``gc``
    timing); the thread wakes every few ms and takes the GIL only briefly.
    """

    def __init__(self, threshold_s: float, *, depth: int = 30, logger: logging.Logger = log
                 ) -> None:
        self.threshold_s = threshold_s
        self.depth = depth
        self.stalls = 0
        self.gc_pauses = 0
        self.reports: list[str] = []  # the last few reports (tests, debugging)
        self._log = logger
        self._interval = 0.01
        self._last = time.monotonic()
        self._thread_id = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gc_start = 0.0
        self._gc: list[tuple[float, int, float, int]] = []  # (end, generation, seconds, freed)
        self._gc_lock = threading.Lock()

    def beat(self) -> None:
        self._last = time.monotonic()

    def start(self, interval: float) -> None:
        """Watch the calling thread (the loop's), which beats every ``interval`` s."""
        if self._thread is not None:
            return
        self._interval = interval
        self._thread_id = threading.get_ident()
        self._last = time.monotonic()
        self._stop.clear()
        gc.callbacks.append(self._on_gc)
        self._thread = threading.Thread(target=self._watch, name="stall-tracer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        thread.join(1.0)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_start = now
            return
        took = now - self._gc_start
        if took >= self.threshold_s / 2:
            with self._gc_lock:
                self._gc.append((time.monotonic(), info.get("generation", -1), took,
                                 info.get("collected", 0)))

    def _sample(self) -> str | None:
        frame = sys._current_frames().get(self._thread_id)
        if frame is None:
            return None
        return "".join(traceback.format_list(traceback.extract_stack(frame)[-self.depth:]))

    def _watch(self) -> None:
        poll = max(0.001, min(0.005, self.threshold_s / 4))
        stall_from: float | None = None  # the beat the current stall is late after
        samples: Counter[str] = Counter()
        while not self._stop.wait(poll):
            last = self._last
            if stall_from is not None and last != stall_from:
                self._report(stall_from, last, samples)
                stall_from, samples = None, Counter()
            if time.monotonic() - last - self._interval > self.threshold_s:
                stall_from = last
                stack = self._sample()
                if stack is not None:
                    samples[stack] += 1
            elif stall_from is None and self._gc:
                self._report_gc_only()

    def _take_gc(self, until: float) -> list[tuple[float, int, float, int]]:
        with self._gc_lock:
            taken = [g for g in self._gc if g[0] <= until]
            self._gc = [g for g in self._gc if g[0] > until]
        return taken

    def _gc_lines(self, pauses: list[tuple[float, int, float, int]]) -> list[str]:
        self.gc_pauses += len(pauses)
        return [f"gc generation {gen} collection took {took * 1000:.1f} ms ({freed} freed)"
                for _end, gen, took, freed in pauses]

    def _report_gc_only(self) -> None:
        lines = self._gc_lines(self._take_gc(time.monotonic()))
        if lines:
            self._emit("event loop: " + "; ".join(lines))

    def _report(self, since: float, resumed: float, samples: Counter[str]) -> None:
        self.stalls += 1
        stalled_ms = max(0.0, resumed - since - self._interval) * 1000
        parts = [f"event loop stalled {stalled_ms:.0f} ms (> {self.threshold_s * 1000:.0f} ms)"]
        parts += self._gc_lines(self._take_gc(resumed))
        total = sum(samples.values())
        if not total:
            parts.append("no stack sampled (the GIL was held throughout)")
        for stack, count in samples.most_common(3):
            parts.append(f"loop thread in {count}/{total} samples at:\n{stack.rstrip()}")
        self._emit("\n".join(parts))

    def _emit(self, text: str) -> None:
        self.reports = [*self.reports[-9:], text]
        self._log.warning("%s", text)


def lag_summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | int]:
    """p50/p95/p99 (ms, interpolated inside buckets) of the samples between two snapshots."""
    counts = [b - a for a, b in zip(before["counts"], after["counts"], strict=True)]
    total = sum(counts)
    bounds = [0.0, *after["buckets_s"]]
    out: dict[str, float | int] = {"samples": total}
    for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        out[name] = round(_bucket_quantile(counts, bounds, q, total) * 1000, 2) if total else 0.0
    span = after["total_s"] - before["total_s"]
    out["mean_ms"] = round(span / total * 1000, 3) if total else 0.0
    out["over_20ms"] = sum(c for c, hi in zip(counts, [*after["buckets_s"], float("inf")],
                                               strict=True) if hi > 0.02)
    return out


def _bucket_quantile(counts: list[int], bounds: list[float], q: float, total: int) -> float:
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            lo = bounds[i]
            hi = bounds[i + 1] if i + 1 < len(bounds) else bounds[-1] * 2
            return lo + (hi - lo) * (rank - seen) / count
        seen += count
    return bounds[-1] * 2


def add_metrics_routes(worker: Any) -> LoopLagMonitor:
    """Mount ``GET /metrics`` (Prometheus text) and ``GET /metrics/loop`` (the lag
    monitor's raw counters, JSON) on the worker's app; the monitor runs with the app."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest

    histogram: Any
    try:
        histogram = Histogram(
            "rymi_event_loop_lag_seconds",
            "How late the event loop fires a 10 ms timer",
            buckets=LAG_BUCKETS_S,
        )
    except ValueError:  # already registered (several workers in one test process)
        histogram = REGISTRY._names_to_collectors.get("rymi_event_loop_lag_seconds")
    trace_ms = getattr(getattr(worker, "settings", None), "stall_trace_ms", None)
    tracer = StallTracer(trace_ms / 1000) if trace_ms else None
    monitor = LoopLagMonitor(histogram=histogram, tracer=tracer)
    app: web.Application = worker.app

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def loop_counters(_request: web.Request) -> web.Response:
        return web.json_response(monitor.snapshot())

    async def on_startup(_app: web.Application) -> None:
        monitor.start()

    async def on_cleanup(_app: web.Application) -> None:
        await monitor.stop()

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/loop", loop_counters)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    worker.loop_lag = monitor
    return monitor
