import os

import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter; the flag must be set before
# triton.jit decorates attnscope's kernels (at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil
import subprocess

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


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """(cert.pem, key.pem): a self-signed certificate for localhost and 127.0.0.1, valid one day."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    command += " -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key
