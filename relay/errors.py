"""The relay's exceptions; library errors are translated into these where they enter.

    RelayError
    ├── ConfigError            bad configuration (names the key); exit 2
    ├── UsageError             bad CLI input; exit 2
    ├── StoreError
    │   ├── StoreUnavailable   the store cannot be reached or timed out: tempfail
    │   └── NotFound           no such record
    ├── UpstreamError
    │   ├── UpstreamUnavailable  connect/TLS/timeout/4xx before acceptance: tempfail
    │   │   └── UpstreamUncertain  the connection broke after the message was sent: maybe accepted
    │   └── UpstreamRejected     the upstream answered 5xx
    ├── LeaseLost              an outbox copy is no longer ours to send
    └── ScannerUnavailable     clamd cannot be reached (tempfail unless configured to pass)
"""

from __future__ import annotations


class RelayError(Exception):
    pass


class ConfigError(RelayError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class UsageError(RelayError):
    pass


class StoreError(RelayError):
    pass


class StoreUnavailable(StoreError):
    pass


class NotFound(StoreError):
    pass


class UpstreamError(RelayError):
    def __init__(self, message: str, code: int = 451, reply: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamUncertain(UpstreamUnavailable):
    """The whole message went out and then no answer came (timeout, connection lost): the upstream
    may have accepted it. A retry may deliver a second copy, so this is logged and counted."""


class UpstreamRejected(UpstreamError):
    pass


class LeaseLost(RelayError):
    """The outbox lease of a copy expired or passed to another process: it must not be sent."""


class ScannerUnavailable(RelayError):
    pass
