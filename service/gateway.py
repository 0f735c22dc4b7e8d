"""The HTTP side for the viewer: static files from web/ and a thin JSON gateway to the gRPC service.

``POST /api/<Method>`` takes the request message in proto3 JSON and answers with the response in
proto3 JSON (bytes as base64); a streaming method answers with a JSON array of its messages. The
gateway calls the gRPC server like any client, so the viewer sees exactly what the service
returns, and the token check stays in the gRPC server: a browser's ``Authorization`` header is
passed through.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import grpc
from google.protobuf import json_format

from .stubs import channel, stubs

log = logging.getLogger("attnscope.gateway")

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
}
MAX_BODY_BYTES = 1 << 20
#: What the viewer's folder serves: its pages, modules and styles (not the package's Python files).
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


def web_root() -> Path:
    return Path(str(resources.files("attnscope.web")))


class Gateway:
    """A threaded HTTP server in the background, forwarding /api calls to `grpc_address`."""

    def __init__(self, grpc_address: str, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.grpc_address = grpc_address
        self._channel = channel(grpc_address)
        self._methods = stubs(self._channel)
        try:
            self._http = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as exc:
            self._channel.close()
            raise OSError(
                f"could not listen on {host}:{port} for the viewer ({exc.strerror}); "
                "pick another with --http-port, 0 = any free port"
            ) from exc
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._http.serve_forever, name="attnscope-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._channel.close()

    def call(self, method: str, body: bytes, authorization: str | None) -> tuple[int, bytes]:
        """(HTTP status, JSON body) for one API call."""
        if method not in self._methods:
            return _error(
                HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no method {method!r}; one of {sorted(self._methods)}"
            )
        stub = self._methods[method]
        request_cls, call, streaming = stub.request_type, stub.call, stub.streaming
        try:
            request = json_format.Parse(body or b"{}", request_cls())
        except json_format.ParseError as exc:
            return _error(
                HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", f"bad {request_cls.__name__} JSON: {exc}"
            )
        metadata = (("authorization", authorization),) if authorization else ()
        try:
            if streaming:
                messages = [json_format.MessageToDict(m) for m in call(request, metadata=metadata)]
                return HTTPStatus.OK, json.dumps(messages).encode()
            return HTTPStatus.OK, json.dumps(
                json_format.MessageToDict(call(request, metadata=metadata))
            ).encode()
        except grpc.RpcError as exc:
            code = exc.code()
            return _error(_HTTP_STATUS.get(code, HTTPStatus.INTERNAL_SERVER_ERROR), code.name, exc.details())

    def _handler_class(self):
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "attnscope"

            def log_message(self, fmt, *args):  # one line per request, through logging
                log.info("%s %s", self.address_string(), fmt % args)

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the page went away mid-answer
                    log.info("client closed the connection before the answer was sent")

            def do_POST(self):
                if not self.path.startswith("/api/"):
                    self._send(*_error(HTTPStatus.NOT_FOUND, "NOT_FOUND", "POST only under /api/<Method>"))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(
                        *_error(
                            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            "RESOURCE_EXHAUSTED",
                            f"request body over {MAX_BODY_BYTES} bytes",
                        )
                    )
                    return
                body = self.rfile.read(length)
                self._send(*gateway.call(self.path[len("/api/") :], body, self.headers.get("Authorization")))

            def do_GET(self):
                root = web_root().resolve()
                rel = self.path.split("?", 1)[0].split("#", 1)[0].lstrip("/") or "index.html"
                target = (root / rel).resolve()
                inside = root in target.parents
                if not inside or target.suffix not in STATIC_TYPES or not target.is_file():
                    self._send(*_error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no file {rel!r}"))
                    return
                self._send(HTTPStatus.OK, target.read_bytes(), STATIC_TYPES[target.suffix])

        return Handler


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"code": code, "message": message}).encode()
