"""Traces kept on the server: bounded by device memory and a time to live, least recently used out first."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

from ..extract import Trace
from .errors import NotFound, ResourceExhausted, shorten


class TraceCache:
    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        # id -> (trace, model name, bytes, last use)
        self._items: OrderedDict[str, tuple[Trace, str, int, float]] = OrderedDict()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(item[2] for item in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _expire(self, now: float) -> None:
        for key in [k for k, item in self._items.items() if now - item[3] > self.ttl_s]:
            del self._items[key]

    def put(self, trace: Trace, model: str) -> str:
        size = trace.nbytes()  # Q and K of a captured trace, the probabilities of an eager one
        if size > self.max_bytes:
            raise ResourceExhausted(
                f"this trace needs {size / 2**20:.1f} MiB but the server keeps at most "
                f"{self.max_bytes / 2**20:.1f} MiB of traces; use Extract without keep_trace"
            )
        trace_id = uuid.uuid4().hex
        with self._lock:
            now = self._clock()
            self._expire(now)
            while self._items and sum(i[2] for i in self._items.values()) + size > self.max_bytes:
                self._items.popitem(last=False)
            self._items[trace_id] = (trace, model, size, now)
        return trace_id

    def get(self, trace_id: str) -> tuple[Trace, str]:
        with self._lock:
            now = self._clock()
            self._expire(now)
            item = self._items.get(trace_id)
            if item is None:
                raise NotFound(
                    f"no trace with id {shorten(trace_id)}: it never existed, was deleted, or expired "
                    f"(traces live {self.ttl_s:g} s after their last use); create it again"
                )
            self._items[trace_id] = (item[0], item[1], item[2], now)
            self._items.move_to_end(trace_id)
            return item[0], item[1]

    def delete(self, trace_id: str) -> bool:
        with self._lock:
            return self._items.pop(trace_id, None) is not None
