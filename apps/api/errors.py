"""HTTP errors with one JSON shape: ``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

_DEFAULT_CODES = {
    400: "BAD_REQUEST",
    401: "AUTH_FAILED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}


class ApiError(StarletteHTTPException):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code or _DEFAULT_CODES.get(status_code, "ERROR")
        self.extra = extra


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = getattr(exc, "code", None) or _DEFAULT_CODES.get(exc.status_code, "ERROR")
    extra = getattr(exc, "extra", {})
    return JSONResponse(error_body(code, str(exc.detail), **extra), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
    ]
    return JSONResponse(error_body("VALIDATION_ERROR", "The request is invalid", details=details), status_code=422)


async def _storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        error_body("UNAVAILABLE", f"Storage is unreachable ({type(exc).__name__}); try again shortly"),
        status_code=503,
        headers={"Retry-After": "2"},
    )


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body("NOT_FOUND", str(exc)), status_code=404)


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body("PROJECT_BUSY", str(exc)), status_code=503, headers={"Retry-After": "1"})


async def _bad_cursor(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body("VALIDATION_ERROR", str(exc)), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    from apps.api.stores.projects import InvalidCursor, ProjectBusy, ProjectNotFound

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ProjectNotFound, _not_found)
    app.add_exception_handler(InvalidCursor, _bad_cursor)
    app.add_exception_handler(ProjectBusy, _busy)
    # the database or Redis is unreachable (or its pool exhausted): 503, try again
    for unavailable in (RedisError, OperationalError, InterfaceError, PoolTimeout, ConnectionError):
        app.add_exception_handler(unavailable, _storage_unavailable)
