"""The HTTP gateway (``pagewire http``): a REST API, server-sent events and a live status page.

``command`` adds the subcommand (and imports nothing heavy), ``app`` builds the
ASGI app (``create_app``, ``HttpSettings``), ``events`` turns the events
exchange into SSE streams, ``jobs`` reads the status tables (and deletes a
finished job), ``static/index.html`` is the status page. See docs/http.md.
"""

from producer.web.command import add_parser, serve

__all__ = ["add_parser", "serve"]
