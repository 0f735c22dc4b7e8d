"""A real gRPC server in a background thread with its own event loop (tests, benchmarks, notebooks)."""

from __future__ import annotations

import asyncio
import threading

from .core import AttentionCore
from .server import Server


class BackgroundServer:
    """Starts `Server(core, host, port, **kwargs)` in a daemon thread; `address` is where it listens."""

    def __init__(
        self,
        core: AttentionCore,
        host: str = "127.0.0.1",
        port: int = 0,
        warm_up: bool = True,
        **server_kwargs,
    ) -> None:
        self.core = core
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="attnscope-grpc", daemon=True)
        self._thread.start()
        self.server = self._await(self._start(host, port, warm_up, server_kwargs))
        self.address = self.server.address

    async def _start(self, host, port, warm_up, kwargs) -> Server:
        # grpc.aio binds a server to the loop it is created in: create it inside that loop.
        server = Server(self.core, host, port, **kwargs)
        await server.start(warm_up=warm_up)
        return server

    def _await(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace_s: float = 1.0) -> None:
        self._await(self.server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
