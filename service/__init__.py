"""The gRPC service (`server`), its transport-free core (`core`), the Python `Client`, and the
view constructors clients use to name what they want (`views`)."""

from . import views
from .client import Client, Result
from .core import AttentionCore, Limits
from .server import Server

__all__ = ["AttentionCore", "Client", "Limits", "Result", "Server", "views"]
