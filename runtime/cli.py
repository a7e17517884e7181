"""`rymi-worker`: the command line.

    rymi-worker dev     the embedded default: local /v1 API + worker + playground, offline
    rymi-worker start   a production worker reporting to RYMI_API_URL with RYMI_API_KEY
    rymi-worker livekit a LiveKit agent worker (registers with RYMI_LIVEKIT_URL)
    rymi-worker bench   the latency and capacity benchmarks

Every flag has an environment variable (``RYMI_<NAME>``); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runtime.settings import WorkerSettings

log = logging.getLogger("rymi")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rymi-worker", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("dev", "run the embedded default: local /v1 API, worker and playground (offline)"),
        ("start", "run a worker against the Rymi API (RYMI_API_URL, RYMI_API_KEY)"),
        ("livekit", "run a LiveKit agent worker"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--host", help="address to listen on (RYMI_HOST, default 127.0.0.1)")
        cmd.add_argument("--port", type=int, help="port, 0 picks a free one (RYMI_PORT, 8080)")
        cmd.add_argument("--data-dir", type=Path, help="where SQLite files live (RYMI_DATA_DIR)")
        cmd.add_argument("--max-calls", type=int, help="concurrent call limit (RYMI_MAX_CALLS)")
        cmd.add_argument("--log-level", help="debug, info, warning, error (RYMI_LOG_LEVEL)")
    bench = sub.add_parser("bench", help="run the benchmarks (see docs/benchmarks.md)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to python -m benchmarks")
    return parser


def _settings(args: argparse.Namespace) -> WorkerSettings:
    overrides: dict[str, Any] = {}
    for field in ("host", "port", "data_dir", "max_calls", "log_level"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return WorkerSettings(**overrides)


def _bench(argv: list[str]) -> int:
    """``python -m benchmarks`` from the source checkout this worker is installed from
    (the suite uses the checkout's test fakes and is not part of the installed package)."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "__main__.py").is_file():
        print(
            "rymi-worker bench needs the source checkout (pip install -e <checkout>); "
            "run `python -m benchmarks` there",
            file=sys.stderr,
        )
        return 2
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from benchmarks.__main__ import main as bench_main

    return int(bench_main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every option after it belongs to the benchmarks' parser
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"rymi-worker: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "start" and settings.api_url is None:
        print("rymi-worker start: RYMI_API_URL and RYMI_API_KEY are required", file=sys.stderr)
        return 2
    if args.command == "livekit":
        from runtime.transports.livekit import run_livekit_worker

        return _run(run_livekit_worker(settings))
    return _run(_serve(settings, dev=args.command == "dev"))


def _run(main: Coroutine[Any, Any, int | None]) -> int:
    """Run on uvloop where it is installed (it is a dependency on Linux and macOS)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - platforms without uvloop
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return int(runner.run(main) or 0)


async def _serve(settings: WorkerSettings, *, dev: bool) -> int:
    from runtime.server import Worker

    worker = Worker(settings, embedded_api=settings.api_url is None)
    await worker.start()
    print(f"rymi-worker listening on {worker.url}", flush=True)
    if dev:
        print(f"  playground: {worker.url}/", flush=True)
        if worker.dev_key_created:
            print(f"  dev API key (saved in {settings.data_dir}): {worker.api_key}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: no new calls, waiting up to %ss", settings.drain_timeout_s)
    await worker.stop(drain_timeout=settings.drain_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
