"""The ``pagewire http`` subcommand; light to import, so every other command starts as fast as before."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from producer.output import integer, sentence

_SECRET_IN_QUERY = re.compile(r"(?i)\b(token|api_key)=[^&\s]*")


class RedactQuery(logging.Filter):
    """Blank stream tokens (and keys sent in the URL by mistake) out of uvicorn's access log lines.

    A stream token opens one stream for minutes only, but logs outlive it and
    travel further than the gateway: they should not hold one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_IN_QUERY.sub(r"\1=REDACTED", a) if isinstance(a, str) else a for a in record.args
            )
        return True


async def serve(args: argparse.Namespace) -> int:
    """``pagewire http``: run the gateway under uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    from producer.web.app import create_app
    from producer.web.gateway import HttpSettings, NoKeysError

    settings = HttpSettings(http_no_auth=True) if args.no_auth else HttpSettings()
    logging.getLogger().setLevel(settings.log_level.upper())
    try:
        app = create_app(settings)
    except NoKeysError as exc:
        print(exc, file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        # SSE streams never end by themselves: give them a bounded time to go at shutdown.
        timeout_graceful_shutdown=5,
    )
    # After uvicorn.Config, which sets up uvicorn's loggers.
    logging.getLogger("uvicorn.access").addFilter(RedactQuery())
    await uvicorn.Server(config).serve()
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``pagewire http [--host H] [--port P]`` to the ``pagewire`` command."""
    text = "serve the HTTP API and the live status page"
    p = subparsers.add_parser("http", help=text, description=sentence(text) + " (see docs/http.md).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p.add_argument("--port", type=integer(0, 65535), default=8080, help="port to bind (8080; 0: any free port)")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without API keys, every route open (as PAGEWIRE_HTTP_NO_AUTH=1); for loopback and trusted networks",
    )
    p.set_defaults(func=serve)
