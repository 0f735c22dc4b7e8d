"""The Connect protocol (connectrpc.com/docs/protocol) as this gateway speaks it; no aiohttp here.

- Unary: ``POST /attnscope.v1.AttentionService/<Method>`` with ``application/json`` or
  ``application/proto``; the answer is the bare message, or an error ``{"code", "message"}`` as
  JSON with the HTTP status the spec gives its code.
- Server streaming: ``application/connect+json`` or ``application/connect+proto``; the request is
  one enveloped message, the answer (always HTTP 200) is enveloped messages and a last envelope
  with flag 0x02 holding ``{}`` or ``{"error": {...}}``. An envelope is 1 byte of flags, 4 bytes
  of big-endian length, then the message.
- ``Connect-Timeout-Ms`` becomes the gRPC call's deadline; ``Connect-Protocol-Version``, when
  sent, must be 1.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from ... import proto

PREFIX = f"/{proto.SERVICE_NAME}/"
COMPRESSED = 0x01
END_STREAM = 0x02
_HEADER = struct.Struct(">BI")
#: Longest message text this side sends; longer ones (e.g. a parser's echo of the input) are cut.
MAX_MESSAGE_CHARS = 1000

#: Connect code names, by gRPC status (the spec spells CANCELLED "canceled").
CODE_OF_STATUS = {
    status: ("canceled" if status is grpc.StatusCode.CANCELLED else status.name.lower())
    for status in grpc.StatusCode
    if status is not grpc.StatusCode.OK
}
#: The HTTP status of each Connect code (the spec's table "Error Codes").
HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


def shorten(text: str, limit: int = 64) -> str:
    """`text` as `repr`, cut to `limit` characters: messages never echo unbounded input."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 1]}…' ({len(text):,} characters)"


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (an exception's message that may quote the input)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConnectError(Exception):
    """An error answered in Connect's form. `http_status` is the spec's for `code` unless the HTTP
    layer knows better (413: body over the limit; 408: body not sent in time; 415: media type)."""

    def __init__(self, code: str, message: str, http_status: int | None = None) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"not a Connect code: {code!r}")
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS[code]

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> ConnectError:
        """The gRPC server's status and message, as they are (only cut when very long)."""
        status = error.code() or grpc.StatusCode.UNKNOWN
        return cls(CODE_OF_STATUS.get(status, "unknown"), error.details() or "")

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()


def envelope(data: bytes, flags: int = 0) -> bytes:
    return _HEADER.pack(flags, len(data)) + data


def end_stream(error: ConnectError | None = None) -> bytes:
    """The last envelope of every stream: ``{}`` after success, ``{"error": {...}}`` otherwise."""
    body = {"error": error.to_dict()} if error else {}
    return envelope(json.dumps(body).encode(), END_STREAM)


def read_envelopes(data: bytes, max_bytes: int) -> list[tuple[int, bytes]]:
    """Split a whole request body into (flags, message) pairs; refuses a truncated envelope or one
    that claims more than `max_bytes`."""
    out, at = [], 0
    while at < len(data):
        if len(data) - at < _HEADER.size:
            raise ConnectError("invalid_argument", "truncated envelope: fewer than 5 header bytes")
        flags, length = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        if length > max_bytes:
            raise ConnectError("invalid_argument", f"envelope of {length} bytes is over {max_bytes}")
        if len(data) - at < length:
            raise ConnectError("invalid_argument", f"truncated envelope: {len(data) - at} of {length} bytes")
        out.append((flags, data[at : at + length]))
        at += length
    return out


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress one gzip message, refusing more than `max_bytes` of output (no zip bombs)."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise ConnectError("invalid_argument", f"bad gzip data: {exc}") from exc
    if len(out) > max_bytes:
        raise ConnectError("resource_exhausted", f"message over {max_bytes} bytes once decompressed", 413)
    return out


@dataclass(frozen=True)
class Method:
    """One RPC of AttentionService as Connect sees it."""

    name: str
    request_type: type
    response_type: type
    streaming: bool

    @property
    def path(self) -> str:
        return PREFIX + self.name


METHODS = {
    name: Method(
        name,
        getattr(proto, m.input_type.name),
        getattr(proto, m.output_type.name),
        m.server_streaming,
    )
    for name, m in proto.SERVICE.methods_by_name.items()
}

UNARY_TYPES = {"application/json": "json", "application/proto": "proto"}
STREAM_TYPES = {"application/connect+json": "json", "application/connect+proto": "proto"}


def codec_of(content_type: str, method: Method) -> str:
    """The codec ("json" or "proto") of a request's Content-Type, parameters such as charset
    ignored; or the 415 the spec asks for."""
    media = content_type.split(";", 1)[0].strip().lower()
    accepted = STREAM_TYPES if method.streaming else UNARY_TYPES
    if media not in accepted:
        kind = "a server-streaming" if method.streaming else "a unary"
        raise ConnectError(
            "unimplemented",
            f"{method.name} is {kind} method: send Content-Type {' or '.join(accepted)}, "
            f"not {shorten(media, 48)}",
            415,
        )
    return accepted[media]


def timeout_of(header: str | None) -> float | None:
    """Connect-Timeout-Ms (a positive integer of at most 10 digits) in seconds; None = no deadline."""
    if header is None:
        return None
    value = header.strip()
    if not (value.isdigit() and value.isascii() and 1 <= len(value) <= 10 and int(value) > 0):
        raise ConnectError(
            "invalid_argument",
            f"Connect-Timeout-Ms must be a positive integer of at most 10 digits, got {shorten(value, 32)}",
        )
    return int(value) / 1000


def check_protocol_version(header: str | None) -> None:
    if header is not None and header.strip() != "1":
        raise ConnectError(
            "invalid_argument",
            f"Connect-Protocol-Version {shorten(header, 16)} is not supported; this server speaks 1",
        )


def decode(method: Method, codec: str, data: bytes):
    """The request message from its bytes, or INVALID_ARGUMENT saying what is wrong."""
    cls = method.request_type
    if codec == "proto":
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:  # bad wire data, invalid UTF-8
            raise ConnectError(
                "invalid_argument",
                f"the body is not a valid {cls.DESCRIPTOR.full_name} message ({clip(str(exc), 120)})",
            ) from exc
    try:
        text = data.decode("utf-8") if data else "{}"
    except UnicodeDecodeError as exc:
        raise ConnectError(
            "invalid_argument", f"the JSON body is not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from exc
    try:
        return json_format.Parse(text, cls())
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise ConnectError(
            "invalid_argument",
            f"bad {cls.DESCRIPTOR.full_name} JSON: {clip(str(exc), 200)}",
        ) from exc


def encode(method: Method, codec: str, raw: bytes) -> bytes:
    """A response message (its protobuf bytes, as the gRPC server sent them) in `codec`."""
    if codec == "proto":
        return raw
    message = method.response_type.FromString(raw)
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":")).encode()
