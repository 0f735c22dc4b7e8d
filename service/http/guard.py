"""Which requests a local server answers, as Jupyter decides it; no aiohttp here.

- `Host` must name this server: a loopback name or address, the address it is bound to, or a
  name the operator allowed (`--allow-host`). Anything else (DNS rebinding: a page on
  evil.example whose name now resolves to 127.0.0.1) is refused.
- `Origin`, when a browser sends one, must be the viewer's own (same scheme, host and port as
  the request's `Host`) or one the operator allowed (`--allow-origin`). A page of another site,
  or of another port on this machine, is refused, whatever it sends and however it sends it.
- With a token, every request carries it: the viewer's cookie (set when the page is opened with
  ``?token=...``) or ``Authorization: Bearer <token>``. The cookie holds a keyed hash of the
  token, not the token, is HttpOnly (no script reads it) and SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8000" -> "::1", "A.b.:80" -> "a.b"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


Origin = tuple[str, str, int]


def parse_origin(text: str) -> Origin:
    """("http", "localhost", 3000) for "http://localhost:3000"; ValueError for anything that is
    not a bare scheme://host[:port]."""
    parts = urlsplit(text.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"not an origin (scheme://host[:port]): {text!r}")
    if parts.query or parts.fragment or parts.username:
        raise ValueError(f"not an origin (scheme://host[:port]): {text!r}")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    return parts.scheme, parts.hostname.rstrip(".").lower(), port


@dataclass(frozen=True)
class Guard:
    """The checks of one HTTP server. `hosts`/`origins` hold what is allowed besides the
    defaults; "*" in either allows any."""

    scheme: str
    port: int
    hosts: frozenset[str]
    origins: frozenset
    token: str | None = None

    @classmethod
    def build(
        cls,
        bind_host: str,
        port: int,
        token: str | None = None,
        allow_hosts=(),
        allow_origins=(),
        tls: bool = False,
    ) -> Guard:
        hosts = {h.strip().lower().rstrip(".") for h in allow_hosts if h.strip()}
        bound = host_name(bind_host)
        if bound not in _WILDCARD_BINDS:
            hosts.add(bound)
        origins = set()
        for origin in allow_origins:
            origin = origin.strip()
            origins.add(origin if origin in ("*", "null") else parse_origin(origin))
        return cls("https" if tls else "http", port, frozenset(hosts), frozenset(origins), token or None)

    # ---- Host ---------------------------------------------------------------------------------
    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name = host_name(host_header)
        return "*" in self.hosts or name in self.hosts or is_loopback(name)

    # ---- Origin -------------------------------------------------------------------------------
    def own_origin(self, host_header: str) -> Origin:
        return parse_origin(f"{self.scheme}://{host_header.strip()}")

    def origin_allowed(self, origin: str | None, host_header: str) -> bool:
        """No Origin (curl, a Connect client, a same-origin GET) is allowed: the browser attacks
        this check stops always send one."""
        if origin is None:
            return True
        origin = origin.strip()
        if "*" in self.origins:
            return True
        if origin == "null":
            return "null" in self.origins
        try:
            parsed = parse_origin(origin)
        except ValueError:
            return False
        try:
            own = self.own_origin(host_header)
        except ValueError:
            own = None
        return parsed == own or parsed in self.origins

    def is_own_origin(self, origin: str, host_header: str) -> bool:
        try:
            return parse_origin(origin) == self.own_origin(host_header)
        except ValueError:
            return False

    # ---- token --------------------------------------------------------------------------------
    @property
    def cookie_name(self) -> str:
        # Cookies do not keep ports apart: one name per port, so two servers' cookies never mix.
        return f"attnscope-token-{self.port}"

    def cookie_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), b"attnscope viewer cookie", hashlib.sha256).hexdigest()

    def token_matches(self, given: str | None) -> bool:
        if self.token is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def authorised(self, cookie: str | None, authorization: str | None) -> bool:
        """True when no token is set, or the request carries it (cookie or bearer header)."""
        if self.token is None:
            return True
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value().encode()):
            return True
        if authorization and authorization[:7].lower() == "bearer ":
            return self.token_matches(authorization[7:].strip())
        return False
