"""``pagewire http``: the HTTP door to pagewire and its live status page.

The gateway is a producer (it uploads to S3 and publishes ``JobRequest`` and
``JobCancelled``), a subscriber (one queue on the events exchange, fanned out
to server-sent event streams) and a reader of the status tables. It keeps no
state of its own beyond a short memory of the jobs it has just queued, so any
number of gateways can run side by side.

Errors are JSON, ``{"error_code": ..., "message": ...}``, with the codes of the
status tables (``schemas.errors.ErrorCode``) where one fits and the few of
:class:`HttpErrorCode` for what only HTTP can go wrong with.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from producer.api import Client
from producer.web import deepseek, native, slimgest
from producer.web import events as live
from producer.web.errors import add_error_handlers
from producer.web.gateway import Gateway, Guard, HttpSettings, check_auth
from producer.web.models import JobCreate

log = logging.getLogger(__name__)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document, plus the JSON body of ``POST /jobs`` (the route reads its body by hand)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            job_create = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(job_create.pop("$defs", {}))
            schemas["JobCreate"] = job_create
            app.openapi_schema = document
        return app.openapi_schema

    return build


def create_app(settings: HttpSettings | None = None) -> FastAPI:
    """The gateway as an ASGI app; it connects to the broker when it starts (``uvicorn --factory`` works).

    Raises :class:`~producer.web.gateway.NoKeysError` at once when no keys are
    set and running open was not asked for.
    """
    settings = settings or HttpSettings()
    if check_auth(settings):
        log.warning(
            "pagewire http runs WITHOUT API keys (PAGEWIRE_HTTP_NO_AUTH): anyone who reaches it may read, "
            "upload and delete every job; keep it on loopback or a private network"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Client(settings) as client:
            hub = live.EventHub(client)
            await hub.start()
            app.state.gateway = Gateway(settings, client, hub)
            log.info(
                "pagewire http ready (prefix %s, %s)",
                settings.prefix,
                f"{len(settings.api_keys)} API keys" if settings.api_keys else "open: no API keys",
            )
            try:
                yield
            finally:
                await hub.stop()

    app = FastAPI(
        title="pagewire",
        version="1",
        description="PDFs in, text out: queue jobs, follow them live, read their results. See docs/http.md.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load from a CDN; the document itself is at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    # Added last, run first: the Host check, then CORS (a preflight carries no key), then the Guard.
    app.add_middleware(Guard, settings=settings)
    if settings.http_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http_cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
            expose_headers=["Location"],
            # Keys travel in headers, never cookies: credentialed requests stay off.
            allow_credentials=False,
        )
    if settings.http_allowed_hosts != ["*"]:
        # A Host check stops DNS rebinding: a page on another site that resolves its name to this gateway.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.http_allowed_hosts, www_redirect=False)
    add_error_handlers(app)
    app.include_router(native.router)
    app.include_router(slimgest.router)
    app.include_router(deepseek.router)

    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
