"""Client-side callables for every AttentionService method, built from the descriptor (the .proto),
shared by the Python Client and the HTTP gateway."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .. import proto

#: Requests are small (text and view lists); responses are streamed in pieces of <= 1 MiB.
MAX_MESSAGE_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Stub:
    request_type: type
    call: object  # grpc multi-callable
    streaming: bool


_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def channel(address: str, root_certificates: bytes | None = None, tls: bool = False) -> grpc.Channel:
    """A channel to `address`: TLS when `tls` or `root_certificates` (PEM; None = the system's)."""
    if tls or root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.secure_channel(address, credentials, options=_OPTIONS)
    return grpc.insecure_channel(address, options=_OPTIONS)


def stubs(chan: grpc.Channel) -> dict[str, Stub]:
    """Method name -> Stub, for every RPC of AttentionService."""
    out = {}
    for name, method in proto.SERVICE.methods_by_name.items():
        request_cls = getattr(proto, method.input_type.name)
        response_cls = getattr(proto, method.output_type.name)
        make = chan.unary_stream if method.server_streaming else chan.unary_unary
        call = make(
            proto.method_path(name),
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        out[name] = Stub(request_cls, call, method.server_streaming)
    return out
