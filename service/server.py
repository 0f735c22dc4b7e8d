"""The gRPC server: thin servicer methods over `AttentionCore`, health, reflection, auth, limits.

Model work runs on one worker thread per device (the event loop only parses, streams and logs).
Calls beyond `max_pending` in flight are refused with RESOURCE_EXHAUSTED instead of queueing
without bound. Each call is logged on one line: method, request bytes, status, milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from .. import proto
from .core import AttentionCore
from .errors import ResourceExhausted, status_of
from .stubs import MAX_MESSAGE_BYTES
from .tensors import tensor_pieces

log = logging.getLogger("attnscope.service")


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class _TokenCheck(grpc.aio.ServerInterceptor):
    """Every call, health and reflection included, must carry `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

    async def intercept_service(self, continuation, details):
        metadata = dict(details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
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
    """One method per RPC: parse, run the core on the model's worker, convert back."""

    def __init__(self, core: AttentionCore, max_pending: int = 64) -> None:
        self.core = core
        self.max_pending = max_pending
        self._pending = 0
        self._workers: dict[str, ThreadPoolExecutor] = {}
        for ex in core.models.values():
            device = str(ex.device)
            self._workers.setdefault(device, ThreadPoolExecutor(1, thread_name_prefix=f"attnscope-{device}"))
        self._worker_of = {name: self._workers[str(ex.device)] for name, ex in core.models.items()}

    async def _run(self, model: str, fn, *args):
        worker = self._worker_of.get(model or self.core.default_model, next(iter(self._workers.values())))
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

    async def _guarded(self, method: str, request, context, work):
        """Admission, timing, the status map and the one log line, around `work()`."""
        started = time.perf_counter()
        status = grpc.StatusCode.OK
        try:
            if self._pending >= self.max_pending:
                raise ResourceExhausted(
                    f"server busy: {self._pending} calls in flight (limit {self.max_pending}); retry later"
                )
            self._pending += 1
            try:
                return await work()
            finally:
                self._pending -= 1
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            status, message = status_of(exc)
            await context.abort(status, message)
        finally:
            log.info(
                "%s request=%dB status=%s %.1fms",
                method,
                request.ByteSize(),
                status.name,
                (time.perf_counter() - started) * 1e3,
            )

    async def _stream(self, method: str, request, context, compute) -> AsyncIterator:
        result = await self._guarded(
            method,
            request,
            context,
            lambda: self._run(getattr(request, "model", ""), compute, request, _deadline(context)),
        )
        yield proto.ExtractResponse(info=result.info)
        for name, array in result.tensors:
            for piece in tensor_pieces(name, array):
                yield proto.ExtractResponse(tensor=piece)

    # Streaming handlers must themselves be async generator functions for grpc.aio to stream them.
    async def Extract(self, request, context) -> AsyncIterator:
        async for message in self._stream("Extract", request, context, self.core.extract):
            yield message

    async def GetViews(self, request, context) -> AsyncIterator:
        async for message in self._stream("GetViews", request, context, self.core.get_views):
            yield message

    async def CreateTrace(self, request, context):
        return await self._guarded(
            "CreateTrace",
            request,
            context,
            lambda: self._run(request.model, self.core.create_trace, request, _deadline(context)),
        )

    async def DeleteTrace(self, request, context):
        return await self._guarded(
            "DeleteTrace", request, context, lambda: self._run("", self.core.delete_trace, request)
        )

    async def ListModels(self, request, context):
        return await self._guarded(
            "ListModels", request, context, lambda: self._run("", self.core.list_models)
        )

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
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(proto.SERVICE_NAME, handlers)

    def shutdown(self) -> None:
        for worker in self._workers.values():
            worker.shutdown(wait=False, cancel_futures=True)


class Server:
    """A started gRPC server: its bound port, health, and graceful stop."""

    def __init__(
        self,
        core: AttentionCore,
        host: str = "127.0.0.1",
        port: int = 50051,
        token: str | None = None,
        max_pending: int = 64,
    ) -> None:
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
        self.servicer = AttentionServicer(core, max_pending)
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
            self.port = self._grpc.add_insecure_port(f"{host}:{port}")
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

    async def stop(self, grace_s: float = 30.0) -> None:
        """Refuse new calls, let calls in flight finish (up to `grace_s`), then stop."""
        await self._set_health(False)
        await self._grpc.stop(grace_s)
        self.servicer.shutdown()

    async def wait(self) -> None:
        await self._grpc.wait_for_termination()

    async def run_until_signal(self, grace_s: float = 30.0) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: finishing calls in flight (grace %.0f s)", grace_s)
        await self.stop(grace_s)
