"""Prometheus metrics of docs/SPEC.md §13 (prefix consent_relay_). Labels only from bounded sets."""

from __future__ import annotations

import os
import struct
import threading
from bisect import bisect_left
from typing import Any, Callable

import prometheus_client
from prometheus_client import CollectorRegistry

PREFIX = "consent_relay_"
# The one spelling of "no value" in a label (a refusal before the stream is known, a bounce of no
# known account): never "", which a dashboard cannot tell from a missing label.
NO_VALUE = "unknown"


class _KnownChildren:
    """`labels()` on the hot path: prometheus_client checks the names, turns each value into a str
    and takes a lock on every call, though a label set's child, once made, stays in the metric's
    own dict. A set seen before (values given as strs, positionally) is found there directly;
    anything else (a new set, keywords, a wrong count) goes through prometheus_client as before."""

    _metrics: dict[tuple[str, ...], Any]

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if not labelkwargs:
            try:
                return self._metrics[labelvalues]
            except (AttributeError, KeyError, TypeError):
                pass
        return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]


# Adding to a value on the hot path. In multiprocess mode ([smtp] workers > 1) prometheus_client's
# value takes its lock, asks the kernel for the process id (a fork would need new files) and looks
# its key up on every inc; a message made a dozen of them. _adder writes the value's own slot of its
# file directly: the slot of a key never moves (a file that grows is mapped again, so the map is read
# on each write), and a fork is known from os.register_at_fork instead of a getpid per inc, after
# which the library's own inc (which moves the value to the child's files) takes over.
_ADD_LOCK = threading.Lock()
_PACK_TWO_DOUBLES = struct.Struct("dd").pack_into  # prometheus_client.mmap_dict's value and timestamp
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def _adder(value: Any) -> Callable[[float], None]:
    """`value.inc`, or the same done directly when `value` is a multiprocess one whose slot is known."""
    mapped = getattr(value, "_file", None)
    slot = getattr(mapped, "_positions", {}).get(getattr(value, "_key", None))
    if not getattr(value, "_multiprocess", False) or slot is None or not hasattr(mapped, "_m"):
        return value.inc  # type: ignore[no-any-return]
    born = _forks
    library_inc = value.inc

    def add(amount: float) -> None:
        if _forks != born:
            library_inc(amount)
            return
        with _ADD_LOCK:
            value._value += amount
            value._timestamp = 0.0
            _PACK_TWO_DOUBLES(mapped._m, slot, value._value, 0.0)

    return add


class Counter(_KnownChildren, prometheus_client.Counter):
    _add: Callable[[float], None] | None = None  # a labelled metric's parent has none: it cannot count

    def _metric_init(self) -> None:
        super()._metric_init()
        self._add = _adder(self._value)

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        add = self._add
        if add is not None and exemplar is None and amount >= 0:
            add(amount)
            return
        super().inc(amount, exemplar)


class Gauge(_KnownChildren, prometheus_client.Gauge):
    _add: Callable[[float], None] | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        if self._multiprocess_mode not in self._MOST_RECENT_MODES:  # those only take set()
            self._add = _adder(self._value)

    def inc(self, amount: float = 1) -> None:
        add = self._add
        if add is None:
            super().inc(amount)
        else:
            add(amount)

    def dec(self, amount: float = 1) -> None:
        add = self._add
        if add is None:
            super().dec(amount)
        else:
            add(-amount)


class Histogram(_KnownChildren, prometheus_client.Histogram):
    _add_sum: Callable[[float], None] | None = None
    _add_bucket: tuple[Callable[[float], None], ...] = ()

    def _metric_init(self) -> None:
        super()._metric_init()
        self._add_sum = _adder(self._sum)
        self._add_bucket = tuple(_adder(bucket) for bucket in self._buckets)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        add_sum = self._add_sum
        if add_sum is None or exemplar is not None or amount != amount:  # NaN: as the library does
            super().observe(amount, exemplar)
            return
        add_sum(amount)
        # The first bucket whose upper bound holds the amount (the last is +Inf), as the library's loop finds it.
        self._add_bucket[bisect_left(self._upper_bounds, amount)](1)


class Metrics:
    """One instance per process; tests create their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX
        self.messages = Counter(
            p + "messages_total", "Messages by outcome (stream unknown: refused before one was known)", ["account", "stream", "outcome"], registry=r
        )
        self.recipients = Counter(
            p + "recipients_total", "Recipients by outcome (stream unknown: refused before one was known)", ["account", "stream", "outcome"], registry=r
        )
        self.rule_hits = Counter(p + "rule_hits_total", "Rule hits by action", ["rule", "action"], registry=r)
        self.upstream_seconds = Histogram(
            p + "upstream_seconds",
            "Time of one upstream transaction",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.policy_seconds = Histogram(
            p + "policy_seconds",
            "Time of one policy evaluation",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.message_bytes = Histogram(
            p + "message_bytes",
            "Size of received messages",
            buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
            registry=r,
        )
        self.smtp_connections = Gauge(p + "smtp_connections", "Open SMTP connections", registry=r, multiprocess_mode="livesum")
        self.quarantine_messages = Gauge(p + "quarantine_messages", "Messages held in quarantine", registry=r, multiprocess_mode="max")
        self.quarantine_releases = Counter(p + "quarantine_releases_total", "Quarantine releases", registry=r)
        self.quarantine_deletes = Counter(
            p + "quarantine_deletes_total", "Quarantine deletes and purges", ["reason"], registry=r
        )
        self.outbox_messages = Gauge(p + "outbox_messages", "Copies waiting in the outbox", registry=r, multiprocess_mode="max")
        self.outbox_attempts = Counter(
            p + "outbox_attempts_total", "Outbox delivery attempts", ["outcome"], registry=r
        )
        self.outbox_uncertain = Counter(
            p + "outbox_uncertain_total",
            "Outbox attempts whose acceptance by the upstream is unknown (connection lost after the message "
            "was sent, or its holder stopped during the send): a later delivery may be a second copy",
            registry=r,
        )
        self.upstream_uncertain = Counter(
            p + "upstream_uncertain_total",
            "Upstream transactions that sent the whole message and then got no answer: maybe accepted",
            registry=r,
        )
        self.outbox_lease_lost = Counter(
            p + "outbox_lease_lost_total", "Outbox copies not sent because their lease had passed to another process",
            registry=r,
        )
        self.unsubscribes = Counter(p + "unsubscribes_total", "Unsubscribes by method", ["method"], registry=r)
        self.complaints = Counter(p + "complaints_total", "Complaints received", ["account"], registry=r)
        self.webhook_deliveries = Counter(
            p + "webhook_deliveries_total", "Webhook POSTs by result (ok: 2xx; failed: anything else)",
            ["account", "result"], registry=r,
        )
        self.webhook_oldest_pending = Gauge(
            p + "webhook_oldest_pending_seconds", "Age of the oldest event a webhook endpoint of the account has not had yet",
            ["account"], registry=r, multiprocess_mode="max",
        )
        self.bounces = Counter(
            p + "bounces_total", "Bounces (DSNs) received, by kind: hard, soft, unknown", ["account", "kind"], registry=r
        )
        self.signups = Counter(
            p + "signups_total", "Double opt-in signups by outcome (sent, throttled, suppressed, rate_limited, confirmed)",
            ["account", "outcome"], registry=r,
        )
        self.account_state = Gauge(
            p + "account_state", "1 for the account's current state", ["account", "state"], registry=r,
            multiprocess_mode="mostrecent",
        )
        self.consent_records = Gauge(p + "consent_records", "Consent records in the store", registry=r, multiprocess_mode="max")
        self.upstream_up = Gauge(p + "upstream_up", "1 when the upstream MTA answered the last probe", registry=r, multiprocess_mode="max")
        self.auth_failures = Counter(p + "auth_failures_total", "Failed SMTP AUTH attempts", registry=r)
        self.http_auth_failures = Counter(
            p + "http_auth_failures_total", "Wrong admin credentials on the admin listener by kind: bearer, login",
            ["kind"], registry=r,
        )
        self.http_auth_lockouts = Counter(
            p + "http_auth_lockouts_total",
            "Client addresses locked out (429) after too many wrong admin credentials, by the kind that locked them",
            ["kind"], registry=r,
        )
        self.helper_jobs = Counter(
            p + "helper_jobs_total",
            "End-of-DATA verdicts and DKIM signing batches by where they ran: helper, loop (no helper, or "
            "a lone transaction), fallback (the helper was down or hung)",
            ["work", "ran"], registry=r,
        )
        self.helper_restarts = Counter(p + "helper_restarts_total", "Helper processes started again after one died", registry=r)
