"""PNG plots of a results dict (matplotlib, the ``bench`` extra): one figure per metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"rymi": "#1f77b4", "pipecat": "#d62728"}
STYLES = ["-", "--", ":", "-."]


def _cdf(ax: Any, values: list[float], label: str, color: str, style: str = "-") -> None:
    if not values:
        return
    ordered = sorted(values)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label, color=color,
            linestyle=style)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Write every plot the results allow; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    latency = results.get("latency", [])
    if latency:
        for metric, name, title in (
            ("overhead_ms", "latency_overhead_cdf.png",
             "Runtime overhead (voice-to-voice − endpoint silence − provider delays)"),
            ("voice_to_voice_ms", "latency_v2v_cdf.png", "Voice-to-voice latency (wire to wire)"),
        ):
            fig, ax = plt.subplots(figsize=(8, 4.5))
            levels = sorted({r["calls"] for r in latency})
            for run in latency:
                values = [t[metric] for t in run["turns"] if t.get(metric) is not None]
                style = STYLES[levels.index(run["calls"]) % len(STYLES)]
                _cdf(ax, values, f"{run['framework']} × {run['calls']} calls",
                     COLORS.get(run["framework"], "gray"), style)
            ax.set_xlabel("ms")
            ax.set_ylabel("fraction of turns")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            save(fig, name)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for framework in sorted({r["framework"] for r in latency}):
            runs = sorted((r for r in latency if r["framework"] == framework),
                          key=lambda r: r["calls"])
            xs = [r["calls"] for r in runs if r["summary"]["overhead_ms"].get("n")]
            for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
                ys = [r["summary"]["overhead_ms"][q] for r in runs
                      if r["summary"]["overhead_ms"].get("n")]
                ax.plot(xs, ys, style, marker="o", color=COLORS.get(framework, "gray"),
                        label=f"{framework} {q}")
        ax.set_xscale("log")
        ax.set_xlabel("concurrent calls")
        ax.set_ylabel("overhead, ms")
        ax.set_title("Runtime overhead by concurrency", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "latency_overhead_by_calls.png")

    barge = results.get("barge_in", [])
    if barge:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for run in barge:
            color = COLORS.get(run["framework"], "gray")
            _cdf(ax, [b["from_vad_decision_ms"] for b in run["barge_ins"]
                      if "from_vad_decision_ms" in b],
                 f"{run['framework']}: VAD decision → clear", color, "-")
            _cdf(ax, [b["from_first_voiced_ms"] for b in run["barge_ins"]],
                 f"{run['framework']}: first voiced frame → clear", color, "--")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of barge-ins")
        ax.set_title("Barge-in: time to `clear` on the wire", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "bargein_cdf.png")

    capacity = results.get("capacity", [])
    if capacity:
        fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(14, 4.5))
        for run in capacity:
            color = COLORS.get(run["framework"], "gray")
            steps = run["steps"]
            xs = [s["calls"] for s in steps]
            ax1.plot(xs, [s["loop_lag"]["p99_ms"] for s in steps], marker="o", color=color,
                     label=run["framework"])
            ax3.plot(xs, [s["reply_latency_ms"].get("p95", float("nan")) for s in steps],
                     marker="o", color=color, label=f"{run['framework']} p95")
            ax3.plot(xs, [s["reply_latency_ms"].get("p50", float("nan")) for s in steps],
                     marker="x", linestyle="--", color=color, label=f"{run['framework']} p50")
            ax2.plot(xs, [s["cpu_core_fraction"] * 100 for s in steps], marker="o", color=color,
                     label=run["framework"])
        ax1.axhline(20, color="black", linewidth=0.8, linestyle=":")
        ax1.set_xlabel("concurrent calls on one core")
        ax1.set_ylabel("ms")
        ax1.set_yscale("symlog", linthresh=10)
        ax1.set_title("Event-loop lag p99 (limit 20 ms)", fontsize=10)
        ax3.set_xlabel("concurrent calls on one core")
        ax3.set_ylabel("ms")
        ax3.set_title("Voice-to-voice under load", fontsize=10)
        ax2.axhline(100, color="black", linewidth=0.8, linestyle=":")
        ax2.set_xlabel("concurrent calls on one core")
        ax2.set_ylabel("% of one core")
        ax2.set_title("CPU", fontsize=10)
        for ax in (ax1, ax2, ax3):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "capacity.png")

    cold = [r for r in latency if r.get("cold_start_ms")]
    if cold:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        levels = sorted({r["calls"] for r in cold})
        for run in cold:
            style = STYLES[levels.index(run["calls"]) % len(STYLES)]
            _cdf(ax, run["cold_start_ms"], f"{run['framework']} × {run['calls']} calls",
                 COLORS.get(run["framework"], "gray"), style)
        ax.set_xlabel("ms (stream start → first greeting audio − TTS delay)")
        ax.set_ylabel("fraction of calls")
        ax.set_title("Cold start", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "cold_start_cdf.png")
    return written
