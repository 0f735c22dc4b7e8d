"""The server's limits and the viewer's defaults: written once here, reported by GetServerInfo,
used as the CLI's defaults and by the exporters of standalone files."""

from __future__ import annotations

from dataclasses import dataclass

from .. import proto
from ..kernels.facts import DEFAULT_POOLED_SIZE, HEAD_STATS


@dataclass(frozen=True)
class Limits:
    """What one call may ask for; past these a call gets RESOURCE_EXHAUSTED or INVALID_ARGUMENT."""

    max_text_chars: int = 200_000
    max_tokens: int = 16_384
    max_pooled_size: int = 2048
    default_pooled_size: int = DEFAULT_POOLED_SIZE
    max_result_values: int = 64 * 2**20  # 256 MiB of float32 per call
    #: Attention scores all views of one call may evaluate: a pass over every head of every layer
    #: of Llama-3-8B at 128k tokens is 32·32·131072² = 1.8e13; this allows two such passes.
    max_scores: int = 2**45
    trace_cache_bytes: int = 2 * 2**30
    trace_ttl_s: float = 600.0
    max_pending: int = 64
    #: An image request's file; its base64 in Connect JSON (4/3 of it) stays under the HTTP side's
    #: body limit and the gRPC message limit (service/stubs.py MAX_MESSAGE_BYTES).
    max_image_bytes: int = 4 * 2**20
    #: Pixels of an image, read from its header before it is decoded (no decompression bombs).
    max_image_pixels: int = 4096 * 4096
    #: New tokens one request may generate before it is traced.
    max_new_tokens: int = 512

    def message(self):
        return proto.Limits(
            max_text_chars=self.max_text_chars,
            max_tokens=self.max_tokens,
            max_pooled_size=self.max_pooled_size,
            default_pooled_size=self.default_pooled_size,
            max_result_values=self.max_result_values,
            max_scores=self.max_scores,
            trace_cache_bytes=self.trace_cache_bytes,
            trace_ttl_s=self.trace_ttl_s,
            max_pending=self.max_pending,
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
            max_new_tokens=self.max_new_tokens,
        )


@dataclass(frozen=True)
class ViewerDefaults:
    """What the viewer asks for by default (see proto ViewerDefaults)."""

    full_attention_tokens: int = 256
    head_view_top_k: int = 16
    thumbnail_size: int = 64
    tile_size: int = 512

    def message(self):
        return proto.ViewerDefaults(
            full_attention_tokens=self.full_attention_tokens,
            head_view_top_k=self.head_view_top_k,
            thumbnail_size=self.thumbnail_size,
            tile_size=self.tile_size,
        )


VIEWER = ViewerDefaults()


def head_stat_messages() -> list:
    notable = {"high": proto.Notable["NOTABLE_HIGH"], "low": proto.Notable["NOTABLE_LOW"]}
    return [
        proto.HeadStatInfo(name=name, description=text, notable=notable[end])
        for name, (text, end) in HEAD_STATS.items()
    ]


def server_info(limits: Limits, models: list, version: str) -> object:
    """The ServerInfo message of a server (or of a standalone file) with these limits and models."""
    return proto.ServerInfo(
        version=version,
        limits=limits.message(),
        viewer=VIEWER.message(),
        head_stats=head_stat_messages(),
        models=models,
    )
