"""The HTTP layer of ``mlops serve``: a Starlette app on uvicorn.

Two ASGI middlewares wrap every route: one counts and times each request (Prometheus and
telemetry), one checks the bearer token. ``/metrics`` is prometheus_client's own ASGI app.
Every other path goes to one endpoint, which reads the body within the read timeout, and hands
it to :meth:`ServingApp.route`: a small body on the event loop, a large one in a worker thread
within the request timeout. A failure the
client did not cause is answered with a generic body naming the request id; the details go to
the log and to telemetry, redacted.
"""
import asyncio
import hmac
import logging
import time
import uuid

from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlops.observability.redaction import redact_text
from mlops.serving.payload import RequestError
from mlops.serving.server import OPEN_ROUTES, ROUTES, ServingApp

logger = logging.getLogger(__name__)

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
# A body this small is a few rows, scored in well under a millisecond: a hop to a worker thread
# would cost more than the work. Larger bodies are scored in a thread, under the request timeout.
INLINE_BODY_BYTES = 16 * 1024


class BodyTooLarge(Exception):
    pass


class _AsgiApp:
    """Makes Starlette treat an ASGI function as an app rather than a request handler."""

    def __init__(self, app):
        self._app = app

    async def __call__(self, scope, receive, send):
        await self._app(scope, receive, send)


def _error(status: int, code: str, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers or None)


class MeasureRequests:
    """Counts and times every request by route and status, for /metrics and telemetry."""

    def __init__(self, app, serving: ServingApp):
        self.app, self.serving = app, serving

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            # Unknown paths share one label: a scanner must not grow the metrics without bound.
            path = scope["path"]
            route = path if path in ROUTES else "other"
            self.serving.answered(route, status[0], time.perf_counter() - started)


class RequireBearerToken:
    """Refuses every route but the open ones without ``Authorization: Bearer <token>``."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, token.encode()

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = header.partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.expected)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_ROUTES and not self._authorized(scope):
            response = _error(401, "UNAUTHENTICATED", "a valid bearer token is required",
                              **{"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body has {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body has more than {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _failed(serving: ServingApp, path: str, error: BaseException) -> JSONResponse:
    request_id = uuid.uuid4().hex
    logger.error("request %s to %s failed: %s", request_id, path,
                 redact_text(f"{type(error).__name__}: {error}"), exc_info=error)
    if serving.telemetry is not None:
        serving.telemetry.record_exception(error, route=path, request_id=request_id)
    return _error(500, "INTERNAL_ERROR", f"the server failed to answer; request id {request_id}",
                  **{"X-Request-Id": request_id})


def endpoint_for(serving: ServingApp):
    options = serving.options

    async def answer(request: Request) -> Response:
        path = request.url.path
        try:
            body = await asyncio.wait_for(_read_body(request, options.max_body_bytes), options.read_timeout)
        except asyncio.TimeoutError:
            message = f"the body did not arrive within {options.read_timeout:g} s"
            return _error(408, "REQUEST_TIMEOUT", message, Connection="close")
        except BodyTooLarge as error:
            return _error(413, "REQUEST_TOO_LARGE", str(error), Connection="close")
        except ClientDisconnect:
            return Response(status_code=400)
        content_type = request.headers.get("content-type") or "application/json"
        key = request.headers.get("x-request-key", "").encode()
        try:
            if len(body) <= INLINE_BODY_BYTES:
                status, headers, payload = serving.route(request.method, path, body, content_type, key)
            else:
                status, headers, payload = await asyncio.wait_for(
                    run_in_threadpool(serving.route, request.method, path, body, content_type, key),
                    options.request_timeout)
        except asyncio.TimeoutError:
            return _error(504, "REQUEST_TIMEOUT", f"no answer within {options.request_timeout:g} s")
        except RequestError as error:
            return _error(error.status, "BAD_REQUEST", str(error))
        except Exception as error:  # no input may crash the server; the client learns it was ours
            return _failed(serving, path, error)
        return Response(payload, status_code=status, headers=headers)

    return answer


def create_app(serving: ServingApp, lifespan=None) -> Starlette:
    """The Starlette app for ``serving``; ``lifespan`` starts and stops what a worker process owns."""
    app = Starlette(routes=[Route("/metrics", _AsgiApp(make_asgi_app(serving.metrics.registry))),
                            Route("/{path:path}", endpoint_for(serving), methods=METHODS)],
                    lifespan=lifespan)
    if serving.options.token:
        app.add_middleware(RequireBearerToken, token=serving.options.token)
    app.add_middleware(MeasureRequests, serving=serving)
    return app
