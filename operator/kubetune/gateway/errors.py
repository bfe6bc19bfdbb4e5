"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status the
OpenAI API uses for the same case, so the official SDK raises its own exception classes
(AuthenticationError 401, PermissionDeniedError 403, NotFoundError 404, BadRequestError 400,
RateLimitError 429, ...). Every error a router raises is an `OpenAIError` (or one of the helpers below);
validation errors of request bodies and unexpected exceptions are turned into the same shape here.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..clients.kube import KubeError

log = logging.getLogger(__name__)

# HTTP status -> OpenAI's error `type`.
TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 502: "server_error",
         503: "server_error"}


class OpenAIError(Exception):
    """An API error: HTTP `status`, a message naming what is wrong, the request `param` it is about, a `code`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def not_found(kind: str, id_: str, param: str | None = None) -> OpenAIError:
    """404 for an id this tenant does not have: the same answer whether it exists elsewhere or nowhere."""
    return OpenAIError(404, f"No such {kind}: '{id_}'", param=param, code=f"{kind}_not_found".replace(" ", "_"))


def unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(403, message, param=param, code=code)


def rate_limited(message: str, code: str = "rate_limit_exceeded") -> OpenAIError:
    return OpenAIError(429, message, code=code)


def _respond(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def install(app: FastAPI) -> None:
    """Make every error the app returns OpenAI-shaped."""

    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError) -> JSONResponse:
        return _respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = ".".join(loc) or None
        messages = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
                                    or "body", e.get("msg", "invalid")) for e in exc.errors()]
        return _respond(bad_request("; ".join(messages), param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}"
        return _respond(OpenAIError(exc.status_code, message, code="unknown_url" if exc.status_code == 404 else None))

    @app.exception_handler(KubeError)
    async def _kube(request: Request, exc: KubeError) -> JSONResponse:
        # The API server refused the gateway's ServiceAccount: the key's namespace is not a tenant namespace
        # (the chart binds the gateway's rights there only), or the object changed meanwhile.
        if exc.status == 403:
            log.warning("API server denied %s %s: %s", request.method, request.url.path, exc)
            return _respond(forbidden("This key's project is not served by this gateway (no access to its namespace).",
                                      code="namespace_not_served"))
        if exc.status == 409:
            return _respond(OpenAIError(409, "The object changed meanwhile; retry.", code="conflict"))
        log.error("API server error on %s %s: %s", request.method, request.url.path, exc)
        return _respond(OpenAIError(503, "The cluster API is unavailable; retry shortly.", code="service_unavailable"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _respond(OpenAIError(500, "The server had an error while processing your request.", code="internal_error"))
