"""What every sandbox application shares: its reset and health routes, its command line, how it is served."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

import uvicorn
from fastapi import FastAPI


def add_reset_and_health(app: FastAPI, on_reset: Callable[[], None]) -> None:
    """`POST /_admin/reset` (forget all state, between tests) and `GET /healthz` (the process is up)."""

    @app.post("/_admin/reset")
    def reset() -> dict[str, bool]:
        on_reset()
        return {"ok": True}

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}


def command_line(prog: str, description: str, *, port: int) -> argparse.ArgumentParser:
    """The parser with the options every sandbox has: `--host`, `--port` (this sandbox's default)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`argv` parsed, after the sandbox's own options, with `--log-level` last."""
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def serve(args: argparse.Namespace, make_app: Callable[[], FastAPI]) -> None:
    """Log at `--log-level`, then serve the application `make_app` builds on `--host`:`--port`."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(make_app(), host=args.host, port=args.port, log_level=args.log_level)
