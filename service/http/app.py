"""The aiohttp application: Connect calls forwarded to the gRPC server, the viewer's files, the
guard in front of both, and one log line per request with its final status.

The gateway calls the gRPC server like any client (one grpc.aio channel, raw protobuf bytes both
ways), so every answer is exactly what the service returned: binary Connect passes the server's
bytes through, JSON Connect converts them with protobuf's own JSON mapping. A call's deadline is
the request's ``Connect-Timeout-Ms``; when the browser goes away the gRPC call is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..stubs import MAX_MESSAGE_BYTES
from . import connect, static
from .connect import METHODS, ConnectError, clip, shorten
from .guard import Guard

log = logging.getLogger("attnscope.http")

#: Request headers a cross-origin Connect client may send (the spec's, and a bearer token).
ALLOW_HEADERS = (
    "Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, Connect-Content-Encoding, "
    "Connect-Accept-Encoding, Content-Encoding, Accept-Encoding, Authorization, X-User-Agent"
)
EXPOSE_HEADERS = "Content-Encoding, Connect-Content-Encoding, Connect-Accept-Encoding"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_ENCODINGS = ("identity", "gzip")


def _key(name: str, kind: type):
    """A typed request-storage key where aiohttp has them (3.13+), the plain name before."""
    make = getattr(web, "RequestKey", None)
    return make(f"attnscope_{name}", kind) if make else f"attnscope_{name}"


LOGGED = _key("logged", bool)  # the middleware logs this request (AccessLog need not)
CODE = _key("code", str)  # the Connect code it ended with
HTTP_SENT = _key("http_status", int)  # the status already sent (a stream's 200)
CORS_ORIGIN = _key("cors_origin", str)  # an allowed cross-origin page's origin


@dataclass(frozen=True)
class Settings:
    """Bounds on what one request may cost this side."""

    #: A request's body: as large as a gRPC request may be, so an image of up to the service's
    #: Limits.max_image_bytes fits as base64 in Connect JSON (4/3 of its size) beside its text.
    max_body_bytes: int = MAX_MESSAGE_BYTES
    #: Seconds a client has to send a request's whole body once its headers arrived.
    body_timeout_s: float = 30.0
    #: Seconds one write of a response may wait for the client to read.
    write_timeout_s: float = 60.0


class ClientGone(ConnectionError):
    """The client stopped reading (or left) while its answer was being written."""


#: The answer to a page opened without the token (or with a wrong one).
TOKEN_PAGE = (
    "<!doctype html><meta charset=utf-8><title>attnscope: token needed</title>"
    "<p>This attnscope server needs its token. Open the address <code>attnscope serve</code> "
    "printed (it ends in <code>/?token=…</code>) once; this browser then keeps it in a cookie.</p>"
)


def _token_page() -> web.Response:
    return web.Response(status=401, text=TOKEN_PAGE, content_type="text/html", charset="utf-8")


class Handlers:
    """Every request goes through `middleware` (log line, guard) to `dispatch`."""

    def __init__(self, channel: grpc.aio.Channel, guard: Guard, settings: Settings) -> None:
        self.guard = guard
        self.settings = settings
        self.calls = {
            name: (channel.unary_stream if m.streaming else channel.unary_unary)(m.path)
            for name, m in METHODS.items()
        }
        self.root = static.web_root()

    # ---- the middleware: one log line, the guard, errors in Connect's form ----------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[LOGGED] = True
        status, code = "-", None
        try:
            try:
                response = await self.guarded(request, handler)
            except web.HTTPException as exc:  # aiohttp's own (e.g. a bad query string)
                raise ConnectError(_code_of_http(exc.status), exc.reason, exc.status) from None
            status, code = response.status, request.get(CODE)
            return response
        except ConnectError as exc:
            status, code = exc.http_status, exc.code
            return error_response(exc, force_close=exc.http_status in (408, 413))
        except (asyncio.CancelledError, ConnectionError):
            # The client went away (499, as nginx logs it; 200 if a stream had begun): its gRPC
            # call is cancelled (see forward_unary and forward_stream).
            status, code = request.get(HTTP_SENT, 499), "canceled"
            raise
        except Exception as exc:
            log.exception("internal error answering %s", request.path, exc_info=exc)
            status, code = 500, "internal"
            return error_response(ConnectError("internal", "internal error; the server log has the details"))
        finally:
            log.info(
                "%s %s from %s: http=%s%s %.1fms",
                request.method,
                clip(request.path, 80),  # never the query: it may hold the token
                request.remote,
                status,
                f" code={code}" if code else "",
                (time.perf_counter() - started) * 1e3,
            )

    async def guarded(self, request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not self.guard.host_allowed(host):
            raise ConnectError(
                "permission_denied",
                f"Host {shorten(host or '', 48)} is not a name of this server; "
                "start it with --allow-host NAME to answer to another name",
            )
        origin = request.headers.get("Origin")
        if not self.guard.origin_allowed(origin, host):
            raise ConnectError(
                "permission_denied",
                f"cross-origin request from {shorten(origin, 64)} refused; "
                "start the server with --allow-origin ORIGIN to allow that page",
            )
        if origin is not None and not self.guard.is_own_origin(origin, host):
            request[CORS_ORIGIN] = origin.strip()
        if request.method == "OPTIONS":
            return self.preflight(request)
        login = self.login(request)
        if login is not None:
            return login
        if not self.guard.authorised(
            request.cookies.get(self.guard.cookie_name), request.headers.get("Authorization")
        ):
            if request.method in ("GET", "HEAD") and not request.path.startswith(connect.PREFIX):
                request[CODE] = "unauthenticated"
                return _token_page()
            raise ConnectError(
                "unauthenticated",
                "this server needs its token: open the viewer's address with ?token=... once, "
                "or send 'Authorization: Bearer <token>'",
            )
        return await handler(request)

    def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight: allowed origins may POST Connect calls with Connect's headers."""
        origin = request.get(CORS_ORIGIN)
        if origin is None:
            return web.Response(status=204, headers={"Allow": "GET, HEAD, POST, OPTIONS"})
        wanted = request.headers.get("Access-Control-Request-Method", "")
        if wanted not in ("POST", "GET", "HEAD"):
            raise ConnectError("permission_denied", f"method {shorten(wanted, 16)} is not allowed here")
        headers = {
            "Access-Control-Allow-Methods": "POST, GET",
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "7200",
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    def login(self, request: web.Request) -> web.Response | None:
        """A page opened with ``?token=...``: the token becomes this browser's cookie, and the
        browser is sent on to the same address without it (so it is not kept in history)."""
        if (
            self.guard.token is None
            or request.method not in ("GET", "HEAD")
            or "token" not in request.query
            or request.path.startswith(connect.PREFIX)
        ):
            return None
        if not self.guard.token_matches(request.query.get("token")):
            request[CODE] = "unauthenticated"
            return _token_page()
        clean = request.rel_url.with_query([(k, v) for k, v in request.query.items() if k != "token"])
        response = web.Response(status=303, headers={"Location": str(clean), "Cache-Control": "no-store"})
        response.set_cookie(
            self.guard.cookie_name,
            self.guard.cookie_value(),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.guard.scheme == "https",
        )
        return response

    # ---- routing ------------------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(connect.PREFIX):
            return await self.call(request)
        if request.method in ("GET", "HEAD"):
            return self.file(request)
        if request.path.startswith("/api/"):
            raise ConnectError(
                "not_found", f"the viewer's calls are Connect calls now: POST {connect.PREFIX}<Method>"
            )
        raise ConnectError("not_found", f"nothing to {request.method} at {shorten(request.path, 64)}")

    def file(self, request: web.Request) -> web.Response:
        target = static.find(request.path, self.root)
        if target is None:
            raise ConnectError("not_found", f"no file {shorten(request.path.lstrip('/'), 64)}")
        return web.Response(
            body=target.read_bytes(),
            headers={"Content-Type": static.STATIC_TYPES[target.suffix], "Cache-Control": "no-cache"},
        )

    # ---- Connect calls ------------------------------------------------------------------------
    async def call(self, request: web.Request) -> web.StreamResponse:
        name = request.path[len(connect.PREFIX) :]
        method = METHODS.get(name)
        if method is None:
            raise ConnectError(
                "not_found",
                f"AttentionService has no method {shorten(name, 48)}; one of {', '.join(METHODS)}",
            )
        if request.method != "POST":
            raise ConnectError("unimplemented", f"{name} takes POST, not {shorten(request.method, 16)}", 405)
        headers = request.headers
        connect.check_protocol_version(headers.get("Connect-Protocol-Version"))
        codec = connect.codec_of(headers.get("Content-Type", ""), method)
        timeout = connect.timeout_of(headers.get("Connect-Timeout-Ms"))
        # aiohttp itself undoes a unary body's Content-Encoding (gzip, deflate).
        stream_encoding = headers.get("Connect-Content-Encoding", "identity").strip().lower()
        if stream_encoding not in _ENCODINGS:
            raise ConnectError(
                "unimplemented",
                f"Connect-Content-Encoding {shorten(stream_encoding, 24)} is not supported; use {' or '.join(_ENCODINGS)}",
            )
        body = await self.read_body(request)
        if method.streaming:
            body = self.single_message(body, stream_encoding)
        message = connect.decode(method, codec, body)
        metadata = self.metadata(request)
        if method.streaming:
            return await self.forward_stream(request, method, codec, message, timeout, metadata)
        return await self.forward_unary(request, method, codec, message, timeout, metadata)

    def single_message(self, body: bytes, encoding: str) -> bytes:
        envelopes = connect.read_envelopes(body, self.settings.max_body_bytes)
        if len(envelopes) != 1:
            raise ConnectError(
                "invalid_argument",
                f"a server-streaming call takes one enveloped message, got {len(envelopes)}",
            )
        flags, data = envelopes[0]
        if flags & ~connect.COMPRESSED:
            raise ConnectError("invalid_argument", f"request envelope with flags {flags:#04x}")
        if flags & connect.COMPRESSED:
            if encoding == "identity":
                raise ConnectError("invalid_argument", "compressed envelope without Connect-Content-Encoding")
            data = connect.gunzip(data, self.settings.max_body_bytes)
        return data

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body, chunked or not, refused past `max_body_bytes` (413) or when it is not
        sent within `body_timeout_s` (408)."""
        limit = self.settings.max_body_bytes
        too_big = ConnectError(
            "resource_exhausted", f"request body over {limit} bytes (this server's limit)", 413
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_big

        async def read() -> bytes:
            chunks, size = [], 0
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.settings.body_timeout_s)
        except asyncio.TimeoutError:
            raise ConnectError(
                "deadline_exceeded",
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
                408,
            ) from None

    def metadata(self, request: web.Request) -> tuple:
        if self.guard.token is not None:  # the request was authorised above: call with the token
            return (("authorization", f"Bearer {self.guard.token}"),)
        given = request.headers.get("Authorization")
        return (("authorization", given),) if given else ()

    async def forward_unary(self, request, method, codec, message, timeout, metadata) -> web.Response:
        call = self.calls[method.name](message.SerializeToString(), timeout=timeout, metadata=metadata)
        try:
            raw = await call
        except grpc.RpcError as exc:
            raise ConnectError.from_rpc(exc) from None
        finally:
            if not call.done():  # the browser left: the server abandons the call's work
                call.cancel()
        request[CODE] = "ok"
        return web.Response(
            body=connect.encode(method, codec, raw),
            headers={"Content-Type": f"application/{codec}", "Cache-Control": "no-store"},
        )

    async def forward_stream(self, request, method, codec, message, timeout, metadata) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": f"application/connect+{codec}", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        request[HTTP_SENT] = 200
        call = self.calls[method.name](message.SerializeToString(), timeout=timeout, metadata=metadata)
        error = None
        try:
            async for raw in call:
                await self.write(response, connect.envelope(connect.encode(method, codec, raw)))
        except grpc.RpcError as exc:
            error = ConnectError.from_rpc(exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            log.exception("internal error streaming %s", method.name, exc_info=exc)
            error = ConnectError("internal", "internal error; the server log has the details")
        finally:
            if not call.done():
                call.cancel()
        await self.write(response, connect.end_stream(error))
        await response.write_eof()
        request[CODE] = error.code if error else "ok"
        return response

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        try:
            await asyncio.wait_for(response.write(data), self.settings.write_timeout_s)
        except asyncio.TimeoutError:
            raise ClientGone(f"the client read nothing for {self.settings.write_timeout_s:g} s") from None


def _code_of_http(status: int) -> str:
    return {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found"}.get(
        status, "unknown" if status < 500 else "internal"
    )


def error_response(exc: ConnectError, force_close: bool = False) -> web.Response:
    response = web.Response(
        status=exc.http_status, body=exc.to_json(), headers={"Content-Type": "application/json"}
    )
    if force_close:  # the rest of the body is not read: this connection cannot serve another request
        response.force_close()
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every answer carries, and CORS ones for an allowed cross-origin page."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    origin = request.get(CORS_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary and "Origin" not in vary else (vary or "Origin")


class AccessLog(AbstractAccessLogger):
    """Logs what the middleware never saw: requests aiohttp refused itself (malformed HTTP, a bad
    Content-Length, a header line too long), each answered 400 on one line."""

    def log(self, request, response, time: float) -> None:
        if request.get(LOGGED):
            return
        reason = (getattr(response, "text", "") or "").strip().splitlines()[:1]
        self.logger.info(
            "malformed HTTP request from %s: http=%s (%s)",
            request.remote,
            response.status,
            reason[0] if reason else "-",
        )


def build(channel: grpc.aio.Channel, guard: Guard, settings: Settings) -> web.Application:
    handlers = Handlers(channel, guard, settings)
    app = web.Application(middlewares=[handlers.middleware], client_max_size=settings.max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", handlers.dispatch)
    app.on_response_prepare.append(_on_prepare)
    return app
