"""Structured JSON logs (one object a line). Recipient addresses are hashed unless configured plain."""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any, Iterable

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog._config import _CONFIG

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
    logger = _LOGGERS.get(name)
    if logger is None:
        logger = _LOGGERS[name] = _Logger(name)
    return logger


class _Logger:
    """structlog's own proxy (`structlog.get_logger`) assembles a new bound logger, and a new
    PrintLogger, on every call when loggers are not cached; caching them would keep a logger built
    under an earlier configuration (tests configure again, capture_logs swaps the processors). This
    one keeps the logger it built while structlog's configuration is the same objects, and builds
    another when it changes: a line costs its rendering, not the assembly."""

    __slots__ = ("_proxy", "_bound", "_wrapper", "_factory", "_processors", "_context")

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)
        self._bound: Any = None
        self._wrapper: Any = None
        self._factory: Any = None
        self._processors: Any = None
        self._context: Any = None

    def _current(self) -> Any:
        c = _CONFIG
        if (
            self._wrapper is not c.default_wrapper_class or self._factory is not c.logger_factory
            or self._processors is not c.default_processors or self._context is not c.default_context_class
            or self._bound is None
        ):
            self._bound = self._proxy.bind()
            self._wrapper, self._factory = c.default_wrapper_class, c.logger_factory
            self._processors, self._context = c.default_processors, c.default_context_class
        return self._bound

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at `level` would be written (True for a wrapper that cannot say)."""
        check = getattr(self._current(), "is_enabled_for", None)
        return True if check is None else bool(check(level))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)


_LOGGERS: dict[str, _Logger] = {}
