"""The HTTP gateway (``pagewire http``): a REST API, server-sent events and a live status page.

- ``command``: the subcommand (it imports nothing heavy);
- ``app``: the ASGI app (``create_app``), made of
- ``gateway``: settings (``HttpSettings``), shared state, the API-key check, uploads;
- ``models`` and ``errors``: the request and response models, error codes and handlers;
- ``native`` and ``slimgest``: the routes, as one ``APIRouter`` each;
- ``events``: the events exchange as SSE streams; ``jobs``: reads of the status tables;
- ``static/index.html``: the status page. See docs/http.md.
"""

from producer.web.command import add_parser, serve

__all__ = ["add_parser", "serve"]
