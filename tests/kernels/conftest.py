import pytest

from attnscope.kernels import triton_common


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element a kernel forgets to write fails its comparison."""
    monkeypatch.setattr(triton_common, "POISON_OUTPUTS", True)
