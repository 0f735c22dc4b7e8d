"""Memory does not grow with L²: attnscope's views against eager output_attentions at 4,096 tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("memory_probe.py")


def peak_raise(mode: str, length: int) -> int:
    # A fixed mmap threshold makes glibc hand large buffers back on free, so RSS follows what is
    # live instead of what the allocator happened to keep from earlier calls.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, str(PROBE), mode, str(length)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env=env,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_views_need_under_a_tenth_of_eager_memory_at_4096_tokens():
    eager = peak_raise("eager", 4096)
    ours = peak_raise("attnscope", 4096)
    l2 = 2 * 4 * 4096 * 4096 * 4  # the attention tensors eager must return, in bytes
    print(
        f"peak RSS raise: eager {eager / 2**20:.0f} MiB, attnscope {ours / 2**20:.0f} MiB, ratio {ours / eager:.3f}"
    )
    assert eager >= l2, "eager must at least hold its returned L×L attentions; the probe is broken"
    assert ours < eager / 10
