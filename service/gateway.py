"""The HTTP side for the viewer: its files and the Connect protocol in front of the gRPC service.

`Gateway` owns the server's life: the listening socket (bound when it is built, so a taken port
is reported at once), an event loop in a thread of its own, the connection limit and the idle
timeout. What it answers, and to whom, is in `service/http/` (`app`, `connect`, `guard`,
`static`). aiohttp is imported only when a Gateway is built: `import attnscope`, the gRPC server
and the benchmarks work without it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from urllib.parse import quote

import grpc

from .stubs import MAX_MESSAGE_BYTES

log = logging.getLogger("attnscope.http")

#: Longest request line (the viewer's URL holds the input text) and longest header line.
MAX_URL_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 << 10

MISSING_AIOHTTP = (
    "the viewer's HTTP side needs aiohttp (pip install 'aiohttp>=3.9'); "
    "or serve gRPC only with --http-port -1"
)


def require_aiohttp() -> None:
    """Raise ImportError saying what to install when aiohttp is missing (before any model loads)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING_AIOHTTP) from exc


class _Refusal:
    """The answer on a connection over the limit: once its request's headers are in (or after a
    second), 503 and close."""

    def __init__(self, body: bytes) -> None:
        self._reply = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self._seen = b""
        self._transport = None
        self._timer = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(1.0, self._answer)

    def data_received(self, data: bytes) -> None:
        self._seen = (self._seen + data)[-4:]
        if b"\r\n\r\n" in self._seen:
            self._answer()

    def _answer(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._reply)
            self._transport.close()
        if self._timer is not None:
            self._timer.cancel()

    def eof_received(self):
        self._answer()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted against the limit (or refused over it)."""

    def __init__(self, gate: Gateway, make) -> None:
        self._gate, self._make, self._inner = gate, make, None

    def connection_made(self, transport) -> None:
        gate = self._gate
        if gate.open_connections >= gate.max_connections:
            peer = transport.get_extra_info("peername")
            log.warning(
                "refused a connection from %s: %d open (limit %d)",
                peer[0] if peer else "?",
                gate.open_connections,
                gate.max_connections,
            )
            self._inner = _Refusal(gate.refusal_body)
        else:
            gate.open_connections += 1
            self._inner = self._make()
            self._counted = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def connection_lost(self, exc) -> None:
        if getattr(self, "_counted", False):
            self._gate.open_connections -= 1
            self._counted = False
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Gateway:
    """HTTP (or HTTPS with `ssl_context`) on `host:port` for the viewer, calling the gRPC server at
    `grpc_address` (over TLS with `grpc_credentials`). Started with `start()`, stopped with `stop()`.

    `token`: every request must carry it (the page trades ``?token=...`` for a cookie); the
    gateway then calls gRPC with ``authorization: Bearer <token>``. Without one it binds only to
    loopback addresses, unless `allow_unauthenticated`. `allow_hosts` and `allow_origins` add to
    the names and pages it answers (see service/http/guard.py).
    """

    def __init__(
        self,
        grpc_address: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        token: str | None = None,
        allow_hosts=(),
        allow_origins=(),
        ssl_context: ssl.SSLContext | None = None,
        grpc_credentials: grpc.ChannelCredentials | None = None,
        allow_unauthenticated: bool = False,
        max_connections: int = 100,
        idle_timeout_s: float = 15.0,
        max_body_bytes: int | None = None,
        body_timeout_s: float = 30.0,
        write_timeout_s: float = 60.0,
    ) -> None:
        require_aiohttp()
        from .http.app import Settings
        from .http.connect import ConnectError
        from .http.guard import Guard, host_name, is_loopback

        if not token and not allow_unauthenticated and not is_loopback(host_name(host)):
            raise ValueError(
                f"refusing to serve the viewer on {host} without a token: anyone who can reach it "
                "could run models here. Set a token (--token-file, ATTNSCOPE_TOKEN) or pass "
                "--allow-unauthenticated"
            )
        self.grpc_address = grpc_address
        self.host = host
        self.max_connections = max_connections
        self.open_connections = 0
        self.refusal_body = ConnectError(
            "unavailable", f"too many connections ({max_connections} open); retry in a moment"
        ).to_json()
        self._ssl = ssl_context
        self._credentials = grpc_credentials
        self._idle_timeout_s = idle_timeout_s
        body_limit = Settings.max_body_bytes if max_body_bytes is None else max_body_bytes
        self._settings = Settings(body_limit, body_timeout_s, write_timeout_s)
        bind = host.strip("[]")
        try:
            self._sock = socket.create_server(
                (bind, port), family=socket.AF_INET6 if ":" in bind else socket.AF_INET, backlog=128
            )
        except OSError as exc:
            raise OSError(
                f"could not listen on {host}:{port} for the viewer ({exc.strerror}); "
                "pick another with --http-port, 0 = any free port"
            ) from exc
        self.port = self._sock.getsockname()[1]
        self.guard = Guard.build(
            host, self.port, token, allow_hosts, allow_origins, tls=ssl_context is not None
        )
        shown = f"[{bind}]" if ":" in bind else bind
        self.url = f"{self.guard.scheme}://{shown}:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="attnscope-http", daemon=True)

    @property
    def viewer_url(self) -> str:
        """The address to open: with the token, once (the page keeps it in a cookie)."""
        token = self.guard.token
        return f"{self.url}/?token={quote(token, safe='')}" if token else f"{self.url}/"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(60)
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self._sock.close()

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the gateway's thread -----------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._failure = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        from aiohttp import web

        from .http import app as http_app

        self._stop = asyncio.Event()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if self._credentials is not None:
            channel = grpc.aio.secure_channel(self.grpc_address, self._credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(self.grpc_address, options=options)
        runner = web.AppRunner(
            http_app.build(channel, self.guard, self._settings),
            handler_cancellation=True,  # a client that leaves cancels its handler, and so its call
            access_log_class=http_app.AccessLog,
            access_log=log,
            keepalive_timeout=self._idle_timeout_s,  # also closes connections that never send a request
            shutdown_timeout=2.0,
            # After a refused body (413, 408), read what the client still sends for this long, so
            # it can read the answer, then close.
            lingering_time=2.0,
            # The viewer keeps its input text in the URL: request lines may be long.
            max_line_size=MAX_URL_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            logger=_quiet_protocol_log(),
        )
        await runner.setup()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Counted(self, runner.server), sock=self._sock, ssl=self._ssl, backlog=128
        )
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await runner.cleanup()
            await channel.close()


def _quiet_protocol_log() -> logging.Logger:
    """aiohttp logs each malformed request with a traceback; AccessLog gives it one line instead."""
    quiet = logging.getLogger("attnscope.http.protocol")
    quiet.setLevel(logging.CRITICAL)
    return quiet
