"""The gRPC server: thin servicer methods over `AttentionCore`, health, reflection, auth, limits.

Model work runs on one worker thread per device (the event loop only parses, streams and logs).
Calls beyond `max_pending` in flight are refused with RESOURCE_EXHAUSTED instead of queueing
without bound. Each call is logged on one line: method, request bytes, status, milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from .. import proto
from ..kernels.interrupt import checking
from .core import AttentionCore
from .errors import Cancelled, InvalidArgument, ResourceExhausted, Unavailable, status_of
from .stubs import MAX_MESSAGE_BYTES
from .tensors import tensor_pieces

log = logging.getLogger("attnscope.service")

WORKER_POLICIES = ("device", "model")


def _pieces(tensors: list) -> list:
    return [piece for name, array in tensors for piece in tensor_pieces(name, array)]


class MalformedRequest:
    """Bytes that are not a valid request message: answered INVALID_ARGUMENT by the call itself
    (grpc turns a deserializer's exception into UNKNOWN, with a traceback in the log)."""

    def __init__(self, what: str, error: Exception) -> None:
        self.what, self.error = what, error

    def ByteSize(self) -> int:  # the log line's request size
        return 0


def _lenient(request_cls):
    def parse(data: bytes):
        try:
            return request_cls.FromString(data)
        except Exception as exc:  # protobuf's DecodeError; invalid UTF-8 in a string field too
            return MalformedRequest(request_cls.DESCRIPTOR.name, exc)

    return parse


class CallControl:
    """What a call's work checks at every checkpoint (kernels/interrupt.py): its deadline, whether
    its client is still there, whether the server is stopping."""

    def __init__(self, deadline: float | None, stopping: threading.Event) -> None:
        self.deadline = deadline
        self.cancelled = threading.Event()
        self._stopping = stopping

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("the call was cancelled (the client went away); its work is abandoned")
        if self._stopping.is_set():
            raise Unavailable("the server is stopping; retry on another server or later")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(
                "deadline exceeded; ask for fewer views or a shorter input, or allow more time"
            )

    def run(self, fn, *args):
        """`fn(*args)` with this call's checks on (on the worker thread that computes)."""
        with checking(self.check):
            return fn(*args)


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address to bind) reaches only this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _TokenCheck(grpc.aio.ServerInterceptor):
    """Every call, health and reflection included, must carry `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):  # constant time: no timing oracle
            return await continuation(details)
        handler = await continuation(details)

        async def deny(request, context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization')"
            )

        if handler is None:
            return None
        if handler.response_streaming:

            async def deny_stream(request, context):
                await deny(request, context)
                yield  # pragma: no cover - abort raises

            return grpc.unary_stream_rpc_method_handler(
                deny_stream, request_deserializer=handler.request_deserializer
            )
        return grpc.unary_unary_rpc_method_handler(deny, request_deserializer=handler.request_deserializer)


class AttentionServicer:
    """One method per RPC: parse, run the core on the model's worker, convert back.

    Model work runs on one worker thread per device (`workers="device"`, the default: a GPU runs
    one model call at a time anyway), or per model (`workers="model"`: several small models on a
    many-core CPU server). Calls that do no model work (ListModels, GetServerInfo, DeleteTrace)
    answer on the event loop, never queued behind a long trace.
    """

    def __init__(self, core: AttentionCore, max_pending: int | None = None, workers: str = "device") -> None:
        if workers not in WORKER_POLICIES:
            raise ValueError(f"workers must be one of {WORKER_POLICIES}, got {workers!r}")
        self.core = core
        self.max_pending = core.limits.max_pending if max_pending is None else max_pending
        self._pending = 0
        #: Set when the server stops: every call's next checkpoint then abandons its work.
        self.stopping = threading.Event()
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._worker_of: dict[str, ThreadPoolExecutor] = {}
        for name, ex in core.models.items():
            key = str(ex.device) if workers == "device" else name
            if key not in self._workers:
                self._workers[key] = ThreadPoolExecutor(1, thread_name_prefix=f"attnscope-{key}")
            self._worker_of[name] = self._workers[key]

    async def _on_worker(self, model: str, control: CallControl, fn, *args):
        """`fn(*args)` on the worker of `model` (a served model's name), under the call's checks."""
        worker = self._worker_of[model]
        return await asyncio.get_running_loop().run_in_executor(worker, control.run, fn, *args)

    @contextlib.asynccontextmanager
    async def _call(self, method: str, request, context, admit: bool = True):
        """Admission, timing, the status map and the one log line around one call's work; yields
        the call's CallControl (cancelled when the call ends in any way but success)."""
        started = time.perf_counter()
        status = grpc.StatusCode.OK
        admitted = False
        control = CallControl(_deadline(context), self.stopping)
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidArgument(
                    f"the request is not a valid {request.what} message ({request.error}); "
                    "send a serialized attnscope.v1 message"
                )
            if admit:
                if self._pending >= self.max_pending:
                    raise ResourceExhausted(
                        f"server busy: {self._pending} calls in flight (limit {self.max_pending}); retry later"
                    )
                self._pending += 1
                admitted = True
            yield control
        except (asyncio.CancelledError, GeneratorExit):
            status = grpc.StatusCode.CANCELLED
            raise
        except (Exception, SystemExit) as exc:  # SystemExit from model code must not stop the server
            status, message = status_of(exc)
            await context.abort(status, message)
        finally:
            control.cancelled.set()  # whatever ended the call, its work (if still running) stops
            if admitted:
                self._pending -= 1
            log.info(
                "%s request=%dB status=%s %.1fms",
                method,
                request.ByteSize(),
                status.name,
                (time.perf_counter() - started) * 1e3,
            )

    async def _stream(self, model: str, control: CallControl, items: Iterator) -> AsyncIterator:
        """Step the core's generator on the model's worker; stream each item as soon as it exists."""
        loop = asyncio.get_running_loop()
        done = object()
        while (item := await self._on_worker(model, control, next, items, done)) is not done:
            what, value = item
            if what == "info":
                yield proto.ExtractResponse(info=value)
            elif what == "manifest":
                yield proto.ExtractResponse(manifest=value)
            elif what == "progress":
                yield proto.ExtractResponse(progress=value)
            else:  # one view's tensors: cut into pieces off the event loop and off the model's worker
                pieces = await loop.run_in_executor(None, _pieces, value)
                for piece in pieces:
                    yield proto.ExtractResponse(tensor=piece)

    # Streaming handlers must themselves be async generator functions for grpc.aio to stream them.
    async def Extract(self, request, context) -> AsyncIterator:
        async with self._call("Extract", request, context) as control:
            model = self.core.model_name(request.model)
            items = self.core.extract(request, control.deadline)
            async for message in self._stream(model, control, items):
                yield message

    async def GetViews(self, request, context) -> AsyncIterator:
        async with self._call("GetViews", request, context) as control:
            model = self.core.trace_owner(request.trace_id)  # its model's worker computes its views
            items = self.core.get_views(request, control.deadline)
            async for message in self._stream(model, control, items):
                yield message

    async def CreateTrace(self, request, context):
        async with self._call("CreateTrace", request, context) as control:
            model = self.core.model_name(request.model)
            return await self._on_worker(model, control, self.core.create_trace, request, control.deadline)

    async def DeleteTrace(self, request, context):
        async with self._call("DeleteTrace", request, context, admit=False):
            return self.core.delete_trace(request)

    async def ListModels(self, request, context):
        async with self._call("ListModels", request, context, admit=False):
            return self.core.list_models()

    async def GetServerInfo(self, request, context):
        async with self._call("GetServerInfo", request, context, admit=False):
            return self.core.server_info()

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, method in proto.SERVICE.methods_by_name.items():
            request_cls = getattr(proto, method.input_type.name)
            response_cls = getattr(proto, method.output_type.name)
            make = (
                grpc.unary_stream_rpc_method_handler
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            handlers[name] = make(
                getattr(self, name),
                request_deserializer=_lenient(request_cls),
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(proto.SERVICE_NAME, handlers)

    async def shutdown(self, settle_s: float = 5.0) -> bool:
        """Abandon all work still running (each call stops at its next checkpoint) and wait up to
        `settle_s` for the workers to be idle; False if one is still busy (one long kernel launch)."""
        self.stopping.set()
        loop = asyncio.get_running_loop()
        idle = [loop.run_in_executor(worker, lambda: None) for worker in self._workers.values()]
        for worker in self._workers.values():
            worker.shutdown(wait=False)  # queued steps still run, and stop at their first check
        try:
            await asyncio.wait_for(asyncio.gather(*idle), settle_s)
            return True
        except (asyncio.TimeoutError, RuntimeError):
            return False


class Server:
    """A started gRPC server: its bound port, health, and graceful stop."""

    def __init__(
        self,
        core: AttentionCore,
        host: str = "127.0.0.1",
        port: int = 50051,
        token: str | None = None,
        max_pending: int | None = None,
        workers: str = "device",
        tls: tuple[bytes, bytes] | None = None,
        allow_unauthenticated: bool = False,
    ) -> None:
        """`tls`: (certificate chain, private key), PEM, to serve TLS instead of plaintext. Binding
        beyond loopback needs a `token` unless `allow_unauthenticated` says otherwise."""
        if not token and not allow_unauthenticated and not is_loopback(host):
            raise ValueError(
                f"refusing to serve {host} without a token: anyone who can reach it could run models "
                "here. Set a token (--token-file, ATTNSCOPE_TOKEN) or pass --allow-unauthenticated"
            )
        self.core = core
        interceptors = [_TokenCheck(token)] if token else []
        self._grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.servicer = AttentionServicer(core, max_pending, workers)
        self._grpc.add_generic_rpc_handlers([self.servicer.handler()])
        # Imported here so that `import attnscope` (and the client) work where only grpcio is installed.
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        self._health_pb2 = health_pb2
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            [
                proto.SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._grpc,
        )
        try:
            if tls is None:
                self.port = self._grpc.add_insecure_port(f"{host}:{port}")
            else:
                credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
                self.port = self._grpc.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError:  # grpcio reports a failed bind this way
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"could not listen on {host}:{port} for gRPC (in use?); pick another with --grpc-port, 0 = any free port"
            )
        self.address = f"{host}:{self.port}"

    async def _set_health(self, serving: bool) -> None:
        response = self._health_pb2.HealthCheckResponse
        status = response.SERVING if serving else response.NOT_SERVING
        for service in ("", proto.SERVICE_NAME):
            await self.health.set(service, status)

    async def start(self, warm_up: bool = True) -> None:
        """Listen at once (health says NOT_SERVING), warm the models up, then say SERVING."""
        await self._set_health(False)
        await self._grpc.start()
        if warm_up:
            await asyncio.get_running_loop().run_in_executor(None, self.core.warm_up)
        await self._set_health(True)

    async def stop(self, grace_s: float = 30.0) -> bool:
        """Refuse new calls, let calls in flight finish (up to `grace_s`), then abandon what is
        left. True when every worker is idle after that; False if one is still busy."""
        await self._set_health(False)
        await self._grpc.stop(grace_s)
        idle = await self.servicer.shutdown()
        if not idle:
            log.warning("a worker is still busy after the grace period; its work is abandoned")
        return idle

    async def wait(self) -> None:
        await self._grpc.wait_for_termination()

    async def run_until_signal(self, grace_s: float = 30.0) -> bool:
        """Serve until SIGTERM or SIGINT, then stop gracefully (see `stop`)."""
        await wait_for_signal()
        log.info("signal received: finishing calls in flight (grace %.0f s)", grace_s)
        return await self.stop(grace_s)


async def wait_for_signal() -> None:
    """Return once SIGTERM or SIGINT arrives (the process's one place that handles them)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
