"""`Client`: the Python side of the wire, returning tokens and numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import proto
from .stubs import channel, stubs
from .tensors import assemble


@dataclass
class Result:
    """What Extract or GetViews returned: the trace's description, the manifest (which tensors
    each requested view returned) and every tensor by name."""

    info: object  # proto.TraceInfo
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    manifest: object = None  # proto.ViewManifest
    #: The Progress messages a generation streamed before the trace, in order.
    progress: list = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        """Query tokens of the trace's default kind."""
        return list(self.info.kinds[0].query_tokens)

    @property
    def trace_id(self) -> str:
        return self.info.trace_id

    def view(self, index: int) -> dict[str, np.ndarray]:
        """The tensors of the `index`-th requested view, by full name (as the manifest lists them)."""
        return {name: self.tensors[name] for name in self.manifest.views[index].tensors}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]


class Client:
    """Talks to `attnscope serve`: ``Client("127.0.0.1:50051").extract("some text")``.

    Errors arrive as `grpc.RpcError` with the server's status code and message.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        token: str | None = None,
        timeout: float | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
    ):
        """`token`: the server's bearer token; `tls` (or `root_certificates`, PEM bytes of the CA
        that signed the server's certificate) for a server started with --tls-cert/--tls-key."""
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = channel(address, root_certificates, tls)
        self._stubs = stubs(self._channel)

    def _call(self, name: str, request, timeout: float | None):
        return self._stubs[name].call(
            request, timeout=timeout if timeout is not None else self.timeout, metadata=self._metadata
        )

    def _collect(self, stream) -> Result:
        info, manifest, pieces, progress = None, None, [], []
        for message in stream:
            which = message.WhichOneof("piece")
            if which == "info":
                info = message.info
            elif which == "manifest":
                manifest = message.manifest
            elif which == "tensor":
                pieces.append(message.tensor)
            elif which == "progress":
                progress.append(message.progress)
        return Result(info, assemble(pieces), manifest, progress)

    def extract(
        self,
        text: str = "",
        model: str = "",
        pair: str = "",
        target: str = "",
        views=None,
        keep_trace: bool = False,
        timeout: float | None = None,
        image: bytes = b"",
        renormalize=None,
        generation=None,
    ) -> Result:
        """Trace `text` (or `image`, an image file's bytes, for a model that takes images) on the
        server; `views` from `attnscope.service.views` (default: stats + pooled); `renormalize`
        (`views.renormalize(...)`): every view without those keys, rows renormalised;
        `generation` (`views.generation(n, ...)`): generate a continuation first, then trace it all
        (the progress messages are in `Result.progress`)."""
        request = proto.ExtractRequest(
            model=model,
            text=text,
            text_pair=pair,
            target=target,
            views=list(views or []),
            keep_trace=keep_trace,
            image=image,
            renormalize=renormalize,
            generation=generation,
        )
        return self._collect(self._call("Extract", request, timeout))

    def create_trace(
        self,
        text: str = "",
        model: str = "",
        pair: str = "",
        target: str = "",
        timeout: float | None = None,
        image: bytes = b"",
        generation=None,
    ):
        """Run the model once (on `text`, or on `image`: an image file's bytes; after generating a
        continuation of `text` given `generation`) and keep the trace on the server; returns its
        TraceInfo (with trace_id)."""
        request = proto.CreateTraceRequest(
            model=model, text=text, text_pair=pair, target=target, image=image, generation=generation
        )
        return self._call("CreateTrace", request, timeout)

    def views(self, trace_id: str, views=None, timeout: float | None = None, renormalize=None) -> Result:
        """Views of a kept trace, without re-running the model (`renormalize` as in `extract`)."""
        request = proto.GetViewsRequest(trace_id=trace_id, views=list(views or []), renormalize=renormalize)
        return self._collect(self._call("GetViews", request, timeout))

    def delete_trace(self, trace_id: str, timeout: float | None = None) -> bool:
        return self._call("DeleteTrace", proto.DeleteTraceRequest(trace_id=trace_id), timeout).deleted

    def list_models(self, timeout: float | None = None) -> list:
        return list(self._call("ListModels", proto.ListModelsRequest(), timeout).models)

    def server_info(self, timeout: float | None = None):
        """The server's limits, the viewer's defaults, its head statistics and models (ServerInfo)."""
        return self._call("GetServerInfo", proto.GetServerInfoRequest(), timeout)

    def export(
        self,
        text: str,
        path,
        model: str = "",
        pair: str = "",
        pooled_size: int = 0,
        tiles=(),
        neuron_queries=None,
        timeout: float | None = None,
    ):
        """Write an .npz, .safetensors or standalone .html export of `text` traced on the server
        (pooled_size 0 = the server's default)."""
        from .exports import export_file

        info = self.create_trace(text, model=model, pair=pair, timeout=timeout)
        try:
            return export_file(
                path,
                info,
                lambda v: self.views(info.trace_id, v, timeout=timeout).tensors,
                text=text,
                pair=pair,
                pooled_size=pooled_size,
                tiles=tiles,
                neuron_queries=neuron_queries,
            )
        finally:
            self.delete_trace(info.trace_id, timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
