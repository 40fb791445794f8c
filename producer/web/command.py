"""The ``pagewire http`` subcommand; light to import, so every other command starts as fast as before."""

from __future__ import annotations

import argparse
import logging
from typing import Any


async def serve(args: argparse.Namespace) -> int:
    """``pagewire http``: run the gateway under uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    from producer.web.app import create_app
    from producer.web.gateway import HttpSettings

    settings = HttpSettings()
    logging.getLogger().setLevel(settings.log_level.upper())
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        # SSE streams never end by themselves: give them a bounded time to go at shutdown.
        timeout_graceful_shutdown=5,
    )
    await uvicorn.Server(config).serve()
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``pagewire http [--host H] [--port P]`` to the ``pagewire`` command."""
    text = "serve the HTTP API and the live status page"
    p = subparsers.add_parser("http", help=text, description=text.capitalize() + " (see docs/http.md).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to bind (8080)")
    p.set_defaults(func=serve)
