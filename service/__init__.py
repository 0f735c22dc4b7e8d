"""The gRPC service (`server`), its transport-free core (`core`), the Python `Client`, and the
request builders clients use to name what they want (`views`).

The client side (`Client`, `Result`, `views`) imports without torch; the server side loads it.
Names are resolved on first use so that importing the client never loads the server.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Client": "client",
    "Result": "client",
    "views": None,  # the module itself
    "AttentionCore": "core",
    "Limits": "limits",
    "ViewerDefaults": "limits",
    "Server": "server",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_WHERE[name] or name}")
    value = module if _WHERE[name] is None else getattr(module, name)
    globals()[name] = value
    return value
