"""Structured JSON logs (one object a line). Recipient addresses are hashed unless configured plain."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from typing import Any, Iterable

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog._config import _CONFIG
from structlog.processors import _json_fallback_handler

_PLAIN = False
# What configure_logging installed (processors, logger factory, wrapper class) and its level: while
# structlog's configuration is still these objects, _Logger.info renders a line itself (_LINE).
_OWN: tuple[Any, Any, Any] | None = None
_OWN_LEVEL = logging.INFO
# JSONRenderer's json.dumps(event_dict, default=_json_fallback_handler), its encoder made once.
_LINE = json.JSONEncoder(default=_json_fallback_handler)
_KEY_TEXT: dict[str, str] = {}  # a field name as _LINE writes it before its value: '"name": '


def _render(fields: dict[str, Any]) -> str:
    """_LINE.encode(fields), written here for a line of strs and lists of strs (the decision line of
    every message) the way _LINE writes them (', ' and ': ' between, ASCII escapes, its own string
    encoder): the JSON encoder's generic walk of a dict cost as much as the rest of the line. Any
    other value goes to _LINE."""
    parts = []
    for key, value in fields.items():
        kind = type(value)
        if kind is str:
            text = encode_basestring_ascii(value)
        elif kind is list and all(type(item) is str for item in value):
            text = "[" + ", ".join(map(encode_basestring_ascii, value)) + "]"
        else:
            return _LINE.encode(fields)
        head = _KEY_TEXT.get(key)
        if head is None:
            if len(_KEY_TEXT) >= 4096:  # field names are the code's own: bounded anyway
                _KEY_TEXT.clear()
            head = _KEY_TEXT[key] = encode_basestring_ascii(key) + ": "
        parts.append(head + text)
    return "{" + ", ".join(parts) + "}"


_second_text: tuple[int, str] = (-1, "")  # a second since the epoch and its ISO date and time, UTC


def _utc_timestamp() -> str:
    """datetime.now(timezone.utc).isoformat().replace("+00:00", "Z") (TimeStamper(fmt="iso",
    utc=True)): the same clock read the same way (whole microseconds, rounded down; no fraction when
    they are 0), the date and time formatted once per second rather than per line."""
    global _second_text
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    known, text = _second_text
    if known != seconds:
        text = datetime.fromtimestamp(seconds, timezone.utc).isoformat()[:19]
        _second_text = (seconds, text)
    micros = nanos // 1000
    return f"{text}.{micros:06d}Z" if micros else text + "Z"


def configure_logging(level: str = "info", log_recipients: str = "hashed", stream: Any = None) -> None:
    global _PLAIN, _OWN, _OWN_LEVEL
    _PLAIN = log_recipients == "plain"
    # _Logger.info writes the same line as these processors without them: keep the two in step.
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    min_level = getattr(logging, level.upper(), logging.INFO)
    wrapper = structlog.make_filtering_bound_logger(min_level)
    # One write per line (print() writes the text and its newline apart): the workers of `workers = N`
    # share one stderr, and two lines written at once must not interleave.
    factory = structlog.WriteLoggerFactory(stream or sys.stderr)
    structlog.configure(
        processors=processors, wrapper_class=wrapper, logger_factory=factory, cache_logger_on_first_use=False
    )
    _OWN, _OWN_LEVEL = (processors, factory, wrapper), min_level
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
    WriteLogger, on every call when loggers are not cached; caching them would keep a logger built
    under an earlier configuration (tests configure again, capture_logs swaps the processors). This
    one keeps the logger it built while structlog's configuration is the same objects, and builds
    another when it changes: a line costs its rendering, not the assembly."""

    __slots__ = ("_proxy", "_bound", "_wrapper", "_factory", "_processors", "_context", "_own_out")

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)
        self._bound: Any = None
        self._wrapper: Any = None
        self._factory: Any = None
        self._processors: Any = None
        self._context: Any = None
        self._own_out: Any = None  # the WriteLogger to write to while the configuration is configure_logging's

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
            own = _OWN is not None and (c.default_processors, c.logger_factory, c.default_wrapper_class) == _OWN
            self._own_out = self._bound._logger if own and c.default_context_class is dict else None
        return self._bound

    def info(self, event: str, **fields: Any) -> None:
        """One line at info. Under configure_logging's own configuration it is rendered here, as its
        processors would (the fields, then event, level and an ISO UTC timestamp, as JSON), without
        structlog's chain of calls: a decision line per message made that a visible share of one."""
        bound = self._current()
        out = self._own_out
        if out is None:
            bound.info(event, **fields)
            return
        if _OWN_LEVEL > logging.INFO:
            return
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = _utc_timestamp()
        out.msg(_render(fields))

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at `level` would be written (True for a wrapper that cannot say)."""
        check = getattr(self._current(), "is_enabled_for", None)
        return True if check is None else bool(check(level))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)


_LOGGERS: dict[str, _Logger] = {}
