import pytest
import torch


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
