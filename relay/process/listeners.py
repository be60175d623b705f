"""The listening sockets, bound once before anything else starts: a port in use is a clear error
before a store, helper or worker exists, and workers inherit the parent's sockets (one accept
queue per port, no SO_REUSEPORT, so a second relay cannot listen beside this one)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field

from relay.config import Config, Listen
from relay.errors import RelayError

_BACKLOG = 1024
KINDS = ("smtp", "tls", "admin", "public")


class ListenError(RelayError):
    """A configured address cannot be listened on (in use, not local, no permission)."""


@dataclass
class Listeners:
    """Bound and listening sockets by kind: smtp, tls (implicit TLS), admin and public (HTTP)."""

    sockets: dict[str, list[socket.socket]] = field(default_factory=dict)

    def of(self, kind: str) -> list[socket.socket]:
        return self.sockets.get(kind, [])

    def port(self, kind: str) -> int:
        socks = self.of(kind)
        return int(socks[0].getsockname()[1]) if socks else 0

    def fds(self, kinds: tuple[str, ...] = KINDS) -> dict[str, list[int]]:
        return {kind: [s.fileno() for s in self.of(kind)] for kind in kinds if self.of(kind)}

    def close(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets = {}

    @classmethod
    def inherited(cls, spec: str) -> Listeners:
        """The sockets a worker got from its parent: `spec` is the JSON of `fds()`."""
        fds: dict[str, list[int]] = json.loads(spec)
        return cls({kind: [socket.socket(fileno=fd) for fd in numbers] for kind, numbers in fds.items() if kind in KINDS})


def _bind(where: Listen, key: str) -> list[socket.socket]:
    try:
        infos = socket.getaddrinfo(where.host or None, where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where.host}:{where.port} ({key}): {exc.strerror}") from exc
    bound: list[socket.socket] = []
    seen: set[tuple[object, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise ListenError(f"cannot listen on {where.host}:{where.port} ({key}): {exc.strerror or exc}") from exc
    return bound


def bind_listeners(config: Config, *, http: bool = True) -> Listeners:
    """Bind every configured address, or none: a failure closes what was bound and raises ListenError."""
    wanted: list[tuple[str, Listen | None, str]] = [
        ("smtp", config.smtp.listen, "smtp.listen"),
        ("tls", config.smtp.tls_listen if config.smtp.tls_cert is not None else None, "smtp.tls_listen"),
    ]
    if http:
        wanted += [
            ("admin", config.http.admin_listen, "http.admin_listen"),
            ("public", config.http.public_listen, "http.public_listen"),
        ]
    listeners = Listeners()
    try:
        for kind, where, key in wanted:
            if where is not None:
                listeners.sockets[kind] = _bind(where, key)
    except ListenError:
        listeners.close()
        raise
    return listeners
