"""The latency and capacity benchmarks, side by side with Pipecat: ``python -m benchmarks``.

    python -m benchmarks               # the full suite (~12 min on 2 cores)
    python -m benchmarks --quick       # a couple of minutes
    rymi-worker bench --quick          # the same, through the CLI

Prints a table, writes raw numbers (JSON) and plots (PNG) to benchmarks/results/.
Scenarios, definitions and the set-up (cores, stand-ins, Pipecat's configuration) are in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.stats import fmt
from benchmarks.systems import (
    LOAD_CORE,
    REPO,
    PipecatSystem,
    RymiSystem,
    System,
    pin,
    pipecat_version,
    standins_process,
)

RESULTS = REPO / "benchmarks" / "results"
TARGETS = {
    "overhead_p95_1_call_ms": 5.0,
    "overhead_p95_100_calls_ms": 20.0,
    "clear_after_vad_ms": 20.0,
    "calls_per_core": 150,
    "ratio_to_pipecat": 5.0,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a couple of minutes)")
    parser.add_argument("--frameworks", default="rymi,pipecat,livekit-agents",
                        help="comma-separated: rymi, pipecat, livekit-agents (default all; "
                             "livekit-agents runs in the livekit scenario only)")
    parser.add_argument("--scenarios", default="latency,bargein,capacity,livekit,offline",
                        help="comma-separated: latency (incl. cold start), bargein, capacity, "
                             "livekit (in a LiveKit room), offline (default all)")
    parser.add_argument("--levels", help="concurrent calls of the latency runs (1,10,50,100)")
    parser.add_argument("--turns", type=int, help="turns per call in the latency runs")
    parser.add_argument("--livekit-levels",
                        help="concurrent rooms of the livekit scenario (1,5; --quick: 1)")
    parser.add_argument("--capacity-rymi", help="capacity steps for the worker")
    parser.add_argument("--capacity-pipecat", help="capacity steps for Pipecat")
    parser.add_argument("--window", type=float, help="capacity: seconds measured per step")
    parser.add_argument("--bargein-calls", type=int, help="concurrent calls of the barge-in run")
    parser.add_argument("--stt-delay", type=float, default=0.1, help="STT final delay, s")
    parser.add_argument("--llm-delay", type=float, default=0.2, help="LLM reply delay, s")
    parser.add_argument("--tts-delay", type=float, default=0.1, help="TTS first byte, s")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNG go")
    parser.add_argument("--name", help="file name of the JSON (default results / quick)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class Plan:
    """What to run, from the arguments (``--quick`` only changes the defaults)."""

    def __init__(self, args: argparse.Namespace) -> None:
        quick = self.quick = args.quick
        self.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
        self.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
        self.levels = _ints(args.levels) if args.levels else ([1, 10] if quick
                                                              else [1, 10, 50, 100])
        self.turns = args.turns
        self.capacity = {
            "rymi": _ints(args.capacity_rymi) if args.capacity_rymi else (
                [25, 75] if quick else [50, 75, 100, 125, 150, 200, 250, 300]),
            "pipecat": _ints(args.capacity_pipecat) if args.capacity_pipecat else (
                [5, 15] if quick else [5, 10, 15, 20, 30, 45, 60]),
        }
        self.window = args.window or (5.0 if quick else 12.0)
        self.settle = 2.0 if quick else 4.0
        # a load every stack sustains (Pipecat: ~10 calls per core), so the reaction is measured
        self.bargein_calls = args.bargein_calls or (3 if quick else 5)
        self.bargein_reps = 1 if quick else 4
        self.offline = (1, 2) if quick else (2, 3)
        self.delays = {"stt": args.stt_delay, "llm": args.llm_delay, "tts": args.tts_delay}
        self.floor_s = 0.0  # the stand-ins' own latency, measured at start (calibrate)
        self.livekit_levels = _ints(args.livekit_levels) if args.livekit_levels else (
            [1] if quick else [1, 5])

    def turns_for(self, calls: int) -> int:
        """Enough turns for stable percentiles, within the time budget."""
        if self.turns:
            return self.turns
        if self.quick:
            return 3 if calls == 1 else 2
        return 10 if calls == 1 else (4 if calls <= 10 else 3)

    def units(self) -> int:
        per = 0
        if "latency" in self.scenarios:
            per += len(self.levels)
        if "bargein" in self.scenarios:
            per += 1
        if "capacity" in self.scenarios:
            per += 1
        twilio = [f for f in self.frameworks if f in SYSTEMS]
        rooms = [f for f in self.frameworks if f in ("rymi", "livekit-agents")]
        livekit = len(self.livekit_levels) * len(rooms) if "livekit" in self.scenarios else 0
        return per * len(twilio) + ("offline" in self.scenarios) + livekit


class Progress:
    """A tqdm bar over the scenario units, with a status line."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<"
                                           "{remaining}] {postfix}")
            except ImportError:
                self.bar = None

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[:70])
        else:
            print(f"… {text}", file=sys.stderr, flush=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


SYSTEMS: dict[str, type[System]] = {"rymi": RymiSystem, "pipecat": PipecatSystem}


async def run(plan: Plan, progress: Progress, workdir: Path) -> dict[str, Any]:
    from benchmarks import scenarios

    results: dict[str, Any] = {
        "started_at": time.time(),
        "machine": {"cpus": _cpus(), "python": platform.python_version(),
                    "platform": platform.platform(), "sut_core": 0, "load_core": LOAD_CORE},
        "versions": {"pipecat-ai": pipecat_version() if "pipecat" in plan.frameworks else None},
        "delays_s": plan.delays,
        "latency": [], "barge_in": [], "capacity": [],
    }
    if "pipecat" in plan.frameworks:
        PipecatSystem.ensure_installed()
        results["versions"]["pipecat-ai"] = pipecat_version()
    if {"latency", "bargein", "capacity"} & plan.scenarios:
        workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the run
        with standins_process(plan.delays, workdir) as urls:
            from benchmarks.standins import calibrate

            progress.status("measuring the stand-ins' own latency")
            floor = await calibrate(urls)
            results["standin_floor_ms"] = floor
            plan.floor_s = sum(floor.values()) / 1000
            for name in [f for f in plan.frameworks if f in SYSTEMS]:
                await _run_framework(name, plan, urls, workdir, progress, results, scenarios)
    if "livekit" in plan.scenarios:
        from benchmarks import livekit_room

        def lk_status(text: str) -> None:
            progress.status(text)
            if "room(s)" in text:
                progress.step()

        results["livekit"] = await livekit_room.run(
            [f for f in plan.frameworks if f in livekit_room.STACKS], plan.livekit_levels,
            plan.delays, workdir / "livekit", lk_status)
    if "offline" in plan.scenarios:
        from benchmarks import offline_loop

        progress.status("offline loop (pocketsphinx → playbook → espeak-ng)")
        results["offline_loop"] = await offline_loop.run(*plan.offline)
        progress.step()
    results["finished_at"] = time.time()
    return results


async def _run_framework(name: str, plan: Plan, urls: dict[str, Any], workdir: Path,
                         progress: Progress, results: dict[str, Any], scenarios: Any) -> None:
    cls = SYSTEMS[name]
    if {"latency", "bargein"} & plan.scenarios:
        system = cls(workdir / name, urls)
        progress.status(f"starting {name}")
        await system.start()
        try:
            progress.status(f"{name}: first call of the process (warm-up, not in the figures)")
            results.setdefault("first_call", []).append(
                await scenarios.latency(system, 1, 2, plan.delays, plan.floor_s))
            if "latency" in plan.scenarios:
                for calls in plan.levels:
                    progress.status(f"{name}: voice-to-voice, {calls} concurrent calls")
                    run = await scenarios.latency(system, calls, plan.turns_for(calls),
                                                  plan.delays, plan.floor_s, progress.status)
                    results["latency"].append(run)
                    progress.step()
            if "bargein" in plan.scenarios:
                progress.status(f"{name}: barge-in, {plan.bargein_calls} calls")
                results["barge_in"].append(await scenarios.barge_in(
                    system, plan.bargein_calls, plan.bargein_reps))
                progress.step()
        finally:
            await system.stop()
    if "capacity" in plan.scenarios:
        system = cls(workdir / f"{name}-capacity", urls)  # a fresh process: clean baseline
        progress.status(f"starting {name} for capacity")
        await system.start()
        try:
            results["capacity"].append(await scenarios.capacity(
                system, plan.capacity[name], settle_s=plan.settle, window_s=plan.window,
                progress=progress.status))
        finally:
            await system.stop()
        progress.step()


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


# --------------------------------------------------------------------------- report


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _table(title: str, head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) if rows else len(head[i])
              for i in range(len(head))]
    out = ["", title, _row(head, widths), _row(["-" * w for w in widths], widths)]
    out += [_row(r, widths) for r in rows]
    return out


def _pcts(s: dict[str, Any], keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    if not s.get("n"):
        return "–"
    return " / ".join(fmt(s.get(k)) for k in keys)


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    d = results["delays_s"]
    budget = (d["stt"] + d["llm"] + d["tts"]) * 1000
    if results["latency"]:
        rows = []
        for r in results["latency"]:
            s = r["summary"]
            rows.append([r["framework"], str(r["calls"]), f"{r['answered']}/{r['expected']}",
                         _pcts(s["voice_to_voice_ms"]), fmt(s["endpoint_silence_ms"].get("p50")),
                         _pcts(s["overhead_ms"]), str(r["error_count"]),
                         fmt(r.get("load_generator_lag_p99_ms"))])
        floor = results.get("standin_floor_ms", {})
        lines += ["", "Stand-ins' own latency beyond their delays (bare client, median): "
                  + ", ".join(f"{k} {v} ms" for k, v in floor.items())
                  + " — counted as provider delay"]
        lines += _table(
            f"Voice-to-voice through Twilio Media Streams (stand-in delays: STT {d['stt']*1000:.0f}"
            f" + LLM {d['llm']*1000:.0f} + TTS {d['tts']*1000:.0f} = {budget:.0f} ms), ms",
            ["stack", "calls", "turns", "v2v p50/p95/p99", "silence p50",
             "overhead p50/p95/p99", "errors", "loadgen lag p99"], rows)
        rows = [[r["framework"], str(r["calls"]), _pcts(r["summary"]["cold_start_ms"])]
                for r in results["latency"]]
        lines += _table("Cold start: stream start → first greeting audio − TTS delay, ms",
                        ["stack", "calls", "p50/p95/p99"], rows)
    if results.get("first_call"):
        rows = [[r["framework"], _pcts(r["summary"]["cold_start_ms"], ("p50",)),
                 _pcts(r["summary"]["overhead_ms"], ("p50", "max"))]
                for r in results["first_call"]]
        lines += _table("First call of a fresh process (warm-up, not in the figures above), ms",
                        ["stack", "cold start", "overhead p50/max"], rows)
    if results["barge_in"]:
        rows = [[r["framework"], str(len(r["barge_ins"])),
                 _pcts(r["summary"]["from_vad_decision_ms"], ("p50", "p99")),
                 _pcts(r["summary"]["from_first_voiced_ms"], ("p50", "p99")),
                 str(r["error_count"])] for r in results["barge_in"]]
        lines += _table("Barge-in: `clear` on the wire after …, ms",
                        ["stack", "n", "VAD decision p50/p99", "first voiced frame p50/p99",
                         "errors"], rows)
    for run in results["capacity"]:
        rows = [[str(s["calls"]), str(s["live_calls"]), fmt(s["loop_lag"]["p99_ms"]),
                 f"{s['cpu_core_fraction']:.0%}", fmt(s["cpu_ms_per_call_second"]),
                 fmt(s["rss_mb"]), _pcts(s["reply_latency_ms"], ("p50", "p95")),
                 str(s["failures"]), str(s["client_underruns"]),
                 fmt(s["engine_underruns"]), fmt(s["load_generator_lag_p99_ms"]),
                 "yes" if s["sustained"] else "NO"] for s in run["steps"]]
        lines += _table(
            f"Capacity of one {run['framework']} process on one core: max sustained "
            f"{run['max_sustained_calls']} calls; {fmt(run['cpu_ms_per_call_second'])} ms CPU "
            f"per call-second; {fmt(run['rss_mb_per_call'])} MB RSS per call "
            f"(idle {fmt(run['idle_rss_mb'])} MB)",
            ["calls", "live", "lag p99", "cpu", "cpu ms/call-s", "rss MB", "v2v p50/p95",
             "fail", "underruns", "engine und.", "loadgen lag", "sustained"], rows)
    lk = results.get("livekit") or {}
    if lk.get("skipped"):
        lines += ["", f"LiveKit room scenario skipped: {lk['skipped']}"]
    if lk.get("runs"):
        rows = [[r["framework"], str(r["calls"]), f"{r['answered']}/{r['expected']}",
                 _pcts(r["summary"]["voice_to_voice_ms"]),
                 fmt(r["summary"]["endpoint_silence_ms"].get("p50")),
                 _pcts(r["summary"]["overhead_ms"]), fmt(r["cpu_ms_per_call_second"]),
                 str(r["error_count"])] for r in lk["runs"]]
        lines += _table(
            "Voice-to-voice in a LiveKit room (livekit-server, same stand-ins; overhead "
            "includes the agent → SFU → caller leg), ms",
            ["stack", "rooms", "turns", "v2v p50/p95/p99", "silence p50",
             "overhead p50/p95/p99", "cpu ms/call-s", "errors"], rows)
    offline = results.get("offline_loop")
    if offline:
        rows = [[stage, str(s["n"]), fmt(s["median_ms"]), fmt(s["p95_ms"])]
                for stage, s in offline["stages"].items()]
        lines += _table(f"Offline loop (pocketsphinx → playbook → espeak-ng), "
                        f"{offline['turns']} turns, ms",
                        ["stage", "n", "median", "p95"], rows)
    lines += ["", "Targets (reported, never asserted):"] + [f"  {t}" for t in targets(results)]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def overhead(framework: str, calls: int) -> float | None:
        for r in results["latency"]:
            if r["framework"] == framework and r["calls"] == calls:
                return r["summary"]["overhead_ms"].get("p95")
        return None

    def mark(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "MISSED")

    for calls, key in ((1, "overhead_p95_1_call_ms"), (100, "overhead_p95_100_calls_ms")):
        value = overhead("rymi", calls)
        limit = TARGETS[key]
        ok = None if value is None else value <= limit
        other = overhead("pipecat", calls)
        out.append(f"overhead p95 at {calls} call(s) ≤ {limit:g} ms: {fmt(value)} ms "
                   f"[{mark(ok)}] (Pipecat {fmt(other)} ms)")
    barge = {r["framework"]: r for r in results["barge_in"]}
    if "rymi" in barge:
        value = barge["rymi"]["summary"]["from_vad_decision_ms"].get("p99")
        ok = None if value is None else value <= TARGETS["clear_after_vad_ms"]
        other = barge.get("pipecat", {}).get("summary", {}).get("from_vad_decision_ms", {})
        out.append(f"clear ≤ 20 ms after the VAD decision (p99): {fmt(value)} ms [{mark(ok)}]"
                   f" (Pipecat {fmt(other.get('p99'))} ms)")
    cap = {r["framework"]: r for r in results["capacity"]}
    if "rymi" in cap:
        ours = cap["rymi"]["max_sustained_calls"]
        tested = max(s["calls"] for s in cap["rymi"]["steps"])
        bound = "" if cap["rymi"]["first_failed_level"] else f" (≥; {tested} was the last step)"
        out.append(f"≥ 150 calls per core: {ours}{bound} "
                   f"[{mark(ours >= TARGETS['calls_per_core'])}]")
        if "pipecat" in cap:
            theirs = cap["pipecat"]["max_sustained_calls"]
            ratio = ours / theirs if theirs else None
            out.append(f"≥ 5× Pipecat's calls per core: {ours} vs {theirs} = "
                       f"{fmt(ratio)}× [{mark(None if ratio is None else ratio >= 5)}]")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = Plan(args)
    unknown = set(plan.frameworks) - set(SYSTEMS) - {"livekit-agents"}
    if unknown:
        print(f"unknown framework(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    import os

    affinity = os.sched_getaffinity(0)
    pin(LOAD_CORE)
    try:
        return _main(args, plan)
    finally:
        os.sched_setaffinity(0, affinity)  # the caller's process (e.g. pytest) is left as it was


def _main(args: argparse.Namespace, plan: Plan) -> int:
    progress = Progress(plan.units(), enabled=not args.no_progress)
    runner: Callable[[Any], Any] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    workdir = Path(tempfile.gettempdir()) / "rymi-bench"  # logs of the last run stay here
    try:
        results = runner(run(plan, progress, workdir))
    finally:
        progress.close()
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or ("quick" if args.quick else "results")
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    print(f"\nraw numbers: {path}")
    if not args.no_plots:
        try:
            from benchmarks.plots import write_plots

            plots_dir = args.out if name == "results" else args.out / name
            plots_dir.mkdir(parents=True, exist_ok=True)
            for plot in write_plots(results, plots_dir):
                print(f"plot: {plot}")
        except ImportError:
            print("plots skipped: pip install 'rymi-worker[bench]' for matplotlib",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
