"""Structured JSON logs (one object a line). Recipient addresses are hashed unless configured plain."""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any, Iterable

import structlog
from aiohttp.http_exceptions import HttpProcessingError

_PLAIN = False


def configure_logging(level: str = "info", log_recipients: str = "hashed", stream: Any = None) -> None:
    global _PLAIN
    _PLAIN = log_recipients == "plain"
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiosmtpd logs peers and commands at INFO; keep the library quiet and its warnings JSON too.
    library = logging.getLogger("mail.log")
    library.setLevel(logging.WARNING)
    library.handlers[:] = [_LibraryToJson()]
    library.propagate = False
    # aiohttp's server logs a request it cannot parse (a control character in a header, a broken
    # request line) with a traceback: that is the client's mistake, worth one line, not a stack.
    http = logging.getLogger("aiohttp.server")
    http.handlers[:] = [_HttpServerToJson()]
    http.propagate = False


class _LibraryToJson(logging.Handler):
    """A library's own log record as one of our JSON lines (bounded: it may quote client input)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format string must not break logging
            text = str(record.msg)
        get_logger().log(record.levelno, "library_log", logger=record.name, message=text[:300])


class _HttpServerToJson(logging.Handler):
    """aiohttp.server's records as JSON lines: a malformed request is one `http_bad_request` line
    without a traceback; anything else (a bug of ours) keeps its traceback inside the JSON line."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format string must not break logging
            text = str(record.msg)
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or type(exc).__name__).strip().splitlines()[0][:200]
            get_logger().info("http_bad_request", status=exc.code, reason=reason, message=text[:300])
            return
        fields: dict[str, Any] = {"logger": record.name, "message": text[:300]}
        if record.exc_info:
            fields["exception"] = logging.Formatter().formatException(record.exc_info)
        get_logger().log(record.levelno, "library_log", **fields)


def recipient_label(address: str) -> str:
    """What a log line may say about a recipient."""
    if _PLAIN:
        return address
    return "sha256:" + hashlib.sha256(address.lower().encode("utf-8", "surrogateescape")).hexdigest()[:16]


def recipient_labels(addresses: Iterable[str]) -> list[str]:
    return [recipient_label(a) for a in addresses]


def get_logger(name: str = "consent_relay") -> Any:
    return structlog.get_logger(name)
