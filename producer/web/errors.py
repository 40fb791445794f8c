"""The gateway's errors: JSON bodies with a stable code, the HTTP status of each code, and the handlers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException

from producer.web.models import ErrorBody
from schemas.errors import ErrorCode, PagewireError

log = logging.getLogger(__name__)


class HttpErrorCode(StrEnum):
    """Codes for what only goes wrong over HTTP; the rest use ``ErrorCode``."""

    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    JOB_EXISTS = "job_exists"
    JOB_FINISHED = "job_finished"
    JOB_NOT_FINISHED = "job_not_finished"
    WAIT_TIMEOUT = "wait_timeout"
    SERVICE_UNAVAILABLE = "service_unavailable"
    PRIORITY_NOT_ALLOWED = "priority_not_allowed"
    TOO_MANY_STREAMS = "too_many_streams"
    TOO_MANY_UPLOADS = "too_many_uploads"


# HTTP status of each table code a request can meet.
ERROR_STATUS: dict[str, int] = {
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.RESULT_NOT_READY: 409,
    ErrorCode.INVALID_KEY: 400,
    ErrorCode.BUCKET_NOT_ALLOWED: 403,
    ErrorCode.SOURCE_MISSING: 422,
    ErrorCode.FILE_TOO_LARGE: 413,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.NOT_A_PDF: 415,
    ErrorCode.EMPTY_FILE: 422,
    ErrorCode.INVALID_OPTIONS: 422,
    ErrorCode.MALFORMED_MESSAGE: 422,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
}

# Status and code of each status Starlette and FastAPI raise by themselves (routing, static files,
# reading a body). They raise 400 only for a body they cannot parse (a multipart body without its
# boundary, more files or fields than a route takes, a form that does not decode): that is
# malformed_message, answered 422 like JSON that does not parse, so a client meets one answer for both.
FRAMEWORK_ERRORS: dict[int, tuple[int, str]] = {
    400: (422, ErrorCode.MALFORMED_MESSAGE),
    401: (401, HttpErrorCode.UNAUTHORIZED),
    404: (404, HttpErrorCode.NOT_FOUND),
    405: (405, HttpErrorCode.METHOD_NOT_ALLOWED),
    413: (413, ErrorCode.MESSAGE_TOO_LARGE),
}


def framework_error(status: int) -> tuple[int, str]:
    """The status and code to answer for an ``HTTPException`` of ``status`` that Starlette or FastAPI raised."""
    if status in FRAMEWORK_ERRORS:
        return FRAMEWORK_ERRORS[status]
    # Any other refusal still blames the request, and any other failure the gateway: never a wrong
    # "not_found", which sends a client looking for a route that is there.
    return status, ErrorCode.MALFORMED_MESSAGE if status < 500 else ErrorCode.INTERNAL_ERROR


class ApiError(HTTPException):
    """An error answer with a stable code; raise it anywhere in a request."""

    def __init__(self, status: int, code: str, message: str, *, job_id: str | None = None) -> None:
        super().__init__(status, message)
        self.code = code
        self.message = message
        self.job_id = job_id


def validation_error(exc: ValidationError, code: ErrorCode = ErrorCode.INVALID_OPTIONS) -> ApiError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return ApiError(422, code, f"{where}: {first['msg']}")


def error_response(
    status: int, code: str, message: str, job_id: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error answer; ``headers`` are those the exception carried (a 405's ``Allow``)."""
    body = ErrorBody(error_code=code, message=message, job_id=job_id)
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers or None)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.job_id)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        status, code = framework_error(exc.status_code)
        return error_response(status, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"]) or "request"
        return error_response(422, ErrorCode.MALFORMED_MESSAGE, f"{where}: {first['msg']}")

    # A message model built inside a route refused what the request carried (a field the route's own
    # model let through): the request was at fault, not the gateway.
    @app.exception_handler(ValidationError)
    async def invalid_message(request: Request, exc: ValidationError) -> JSONResponse:
        error = validation_error(exc, ErrorCode.MALFORMED_MESSAGE)
        return error_response(error.status_code, error.code, error.message)

    @app.exception_handler(PagewireError)
    async def pagewire_error(request: Request, exc: PagewireError) -> JSONResponse:
        status = ERROR_STATUS.get(exc.code, 503 if exc.retryable else 500)
        return error_response(status, exc.code, exc.message)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("a service did not answer: %s", exc)
        return error_response(503, HttpErrorCode.SERVICE_UNAVAILABLE, f"a service did not answer: {type(exc).__name__}")

    for kind in (ConnectionError, TimeoutError, OperationalError, DBAPIError):
        app.add_exception_handler(kind, unavailable)
