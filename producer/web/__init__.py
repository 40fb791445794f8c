"""The HTTP gateway (``pagewire http``): a REST API, server-sent events and a live status page.

``app`` builds the ASGI app and the command, ``events`` turns the events
exchange into SSE streams, ``jobs`` reads the status tables (and deletes a
finished job), ``static/index.html`` is the status page. See docs/http.md.
"""

from producer.web.app import HttpSettings, add_parser, create_app, serve

__all__ = ["HttpSettings", "add_parser", "create_app", "serve"]
