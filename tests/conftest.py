import os

import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter; the flag must be set before
# triton.jit decorates attnscope's kernels (at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run `pytest -m cuda` on the GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def small_chunks(monkeypatch):
    """Force many small chunks so chunk boundaries are exercised at test sizes."""
    from attnscope.kernels import scores

    monkeypatch.setattr(scores, "SCORE_BUDGET", 4 * 7 * 37)


@pytest.fixture
def rng():
    """A fresh random generator per test (different inputs on every run), seed printed on failure."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"random seed: {seed}")
    return torch.Generator().manual_seed(seed)
