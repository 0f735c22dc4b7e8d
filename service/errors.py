"""The one place where failures become gRPC status codes with a message a person can act on."""

from __future__ import annotations

import logging

import grpc

from ..extract import IndexOutOfRange

log = logging.getLogger("attnscope.service")


class ServiceError(Exception):
    """An error with a gRPC status; the message is sent to the client as is."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(ServiceError):
    """The client cancelled the call or went away: its work is abandoned at the next checkpoint."""

    code = grpc.StatusCode.CANCELLED


class Unavailable(ServiceError):
    """The server is stopping: work still running past the grace period is abandoned."""

    code = grpc.StatusCode.UNAVAILABLE


def shorten(value: object, limit: int = 64) -> str:
    """`repr(value)`, cut to `limit` characters: messages never echo unbounded input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…' ({len(str(value)):,} characters)"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, message) for any exception raised while serving a call."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, IndexOutOfRange):
        return grpc.StatusCode.OUT_OF_RANGE, str(exc)
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's too
        release_cached_device_memory()
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"out of memory: {exc}; ask for a shorter input or smaller views",
        )
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details"


def release_cached_device_memory() -> None:
    """After an out-of-memory, hand the allocator's cached blocks back so the next call can fit."""
    import torch  # here: the client side imports this module's neighbours without torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
