"""``python -m runtime.local_api``: the local ``/v1`` API as a process of its own.

The same API the worker embeds, without a worker in it: run workers against it with
``RYMI_API_URL``/``RYMI_API_KEY`` to try the hosted set-up (workers in other processes
report through their outboxes and take control commands by long-polling) on one machine.
The fault suite (tests/faults) uses it as "the API" that goes down and comes back.

    python -m runtime.local_api --port 8090 --data-dir /tmp/api --key rymi_...

Prints ``rymi local API listening on http://HOST:PORT`` once it accepts requests; SIGTERM
or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from runtime.local_api.app import MAX_BODY_BYTES, add_local_api_routes
from runtime.local_api.catalog import add_catalog_routes
from runtime.local_api.contract import add_contract_routes
from runtime.local_api.store import LocalStore


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.local_api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--key", default=os.environ.get("RYMI_API_KEY"),
                        help="a secret key to accept (default: RYMI_API_KEY, else the dev key)")
    parser.add_argument("--webhook-backoff-s", type=float, default=5.0,
                        help="first webhook retry delay (doubles per attempt)")
    parser.add_argument("--webhook-allow-host", action="append", default=None,
                        help="deliver webhooks only to this host (repeatable; default: any)")
    parser.add_argument("--log-level", default="info")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    from runtime.settings import WorkerSettings

    store = LocalStore(args.data_dir / "api.sqlite3")
    key, created = store.ensure_dev_key(args.key)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    add_local_api_routes(app, store)
    credentials = WorkerSettings().provider_credentials
    add_catalog_routes(app, api_key=lambda: key, credentials=credentials)
    add_contract_routes(app, store, credentials=credentials,
                        webhook_backoff_s=args.webhook_backoff_s,
                        webhook_allow_hosts=args.webhook_allow_host)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"rymi local API listening on http://{host}:{port}", flush=True)
    if created:
        print(f"  dev API key (saved in {args.data_dir}): {key}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
