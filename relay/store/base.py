"""The narrow async store interface. Callers see only these classes; backends implement them.

Store
├── accounts    AccountStateStore   pause / suspend / resume, read at every MAIL FROM
├── consent     ConsentStore        consent records and suppressions
├── decisions   DecisionStore       every decision, and per-recipient deliveries (the proof)
├── outbox      OutboxStore         durable copies waiting for the upstream
├── quarantine  QuarantineStore     held messages
├── audit       AuditStore          who did what, when, why
├── rates       RateStore           shared token buckets
├── complaints  ComplaintStore      feedback reports and their deadlines (complaints_base.py)
├── bounces     BounceStore         DSNs and what they said about their recipients (bounces.py)
├── events      EventStore          what each account must learn of, in order (events_store.py)
├── webhooks    WebhookStateStore   each webhook endpoint's cursor, backoff and lease (webhooks_store.py)
└── signups     SignupStore         hosted double opt-in requests and confirmations (signups.py)
"""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Iterable, Sequence

from policies.facts import ConsentRecord, Suppression
from relay.store.bounces import BounceStore
from relay.store.complaints_base import ComplaintStore
from relay.store.events_store import EventStore
from relay.store.webhooks_store import WebhookStateStore
from relay.store.signups import SignupStore
from relay.store.records import (
    AccountState,
    AuditEntry,
    DecisionRecord,
    DeliveryRecord,
    Event,
    OutboxItem,
    QuarantineItem,
)


class AccountStateStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, account: str) -> AccountState: ...

    @abc.abstractmethod
    async def set(self, state: AccountState, *, actor: str, note: str) -> None:
        """Write the state and its audit entry in one transaction."""

    @abc.abstractmethod
    async def all(self) -> list[AccountState]: ...


class ConsentStore(abc.ABC):
    @abc.abstractmethod
    async def find_consents(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[ConsentRecord]]:
        """Consent records (revoked ones included) of these addresses at these scopes, by address."""

    @abc.abstractmethod
    async def find_suppressions(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[Suppression]]: ...

    async def find_consents_and_suppressions(
        self, scopes: Sequence[str], emails: Sequence[str]
    ) -> tuple[dict[str, list[ConsentRecord]], dict[str, list[Suppression]]]:
        """Both of the above, as the relay reads them for a message's recipients (at RCPT, or at
        DATA for those not read yet). A store may answer them at once."""
        return await self.find_consents(scopes, emails), await self.find_suppressions(scopes, emails)

    @abc.abstractmethod
    async def upsert_consents(self, records: Iterable[ConsentRecord], *, now: datetime) -> tuple[int, int]:
        """Insert or update in one transaction; returns (written, unchanged)."""

    @abc.abstractmethod
    async def revoke(self, scope: str, email: str, topic: str | None, *, via: str, at: datetime) -> int: ...

    @abc.abstractmethod
    async def touch(self, scopes: Sequence[str], email: str, kind: str, at: datetime) -> int:
        """An interaction (purchase, click, reply, confirmation) extends the consents' life."""

    @abc.abstractmethod
    async def add_suppression(self, suppression: Suppression, *, note: str = "") -> bool: ...

    @abc.abstractmethod
    async def remove_suppression(self, scope: str, email: str, reason: str | None = None) -> int: ...

    @abc.abstractmethod
    async def list_suppressions(self, scope: str | None = None, limit: int = 1000) -> list[Suppression]: ...

    @abc.abstractmethod
    async def count(self) -> int: ...


class DecisionStore(abc.ABC):
    @abc.abstractmethod
    async def record(
        self, decisions: Sequence[DecisionRecord], deliveries: Sequence[DeliveryRecord], events: Sequence[Event] = ()
    ) -> None:
        """Write the batch and the events that tell about it in one transaction."""

    @abc.abstractmethod
    async def reserve_ids(self, name: str, count: int) -> int:
        """Reserve `count` consecutive ids under `name`; returns the first."""

    @abc.abstractmethod
    async def for_relay_id(self, relay_id: str) -> list[DecisionRecord]: ...

    @abc.abstractmethod
    async def deliveries_to(self, email: str, accounts: Sequence[str], limit: int = 1000) -> list[DeliveryRecord]: ...

    @abc.abstractmethod
    async def delivery(self, delivery_id: int) -> DeliveryRecord | None: ...

    @abc.abstractmethod
    async def deliveries_by_message_id(self, message_id: str) -> list[DeliveryRecord]: ...


class OutboxStore(abc.ABC):
    """Durable copies, each leased to one owner at a time. The lease is short and renewed while its
    owner works (`renew`); `fence` proves it is still held immediately before a send and marks the
    send as begun, so that a later claimer knows when the copy may have gone out already."""

    @abc.abstractmethod
    async def enqueue(self, items: Sequence[OutboxItem], *, now: float) -> list[int]:
        """Durably write the copies (committed before this returns)."""

    @abc.abstractmethod
    async def claim_due(
        self, *, now: float, owner: str, lease_seconds: float, limit: int, fenced: bool = False
    ) -> list[OutboxItem]:
        """Lease due copies to `owner`; a copy is leased to one owner at a time. A copy whose last
        holder had begun a send and never recorded its outcome comes back with `interrupted_send`
        (and one more `uncertain`). With `fenced`, the same write marks each claimed copy's send as
        begun (as `settle`'s fence does), so a holder that dies after the claim leaves them uncertain."""

    @abc.abstractmethod
    async def claim_early(
        self, *, now: float, owner: str, lease_seconds: float, limit: int, after_id: int, fenced: bool = False
    ) -> list[OutboxItem]:
        """As `claim_due`, but copies whose retry is not due yet, in id order after `after_id`: the
        upstream is back after an outage, and its copies need not wait out their back-off."""

    @abc.abstractmethod
    async def renew(self, item_ids: Sequence[int], owner: str, *, lease_until: float) -> set[int]:
        """Extend the leases `owner` still holds; returns the ids still held."""

    @abc.abstractmethod
    async def fence(self, item_id: int, owner: str, *, now: float, lease_until: float) -> bool:
        """True when `owner` still holds the copy: its lease is extended and its send marked begun."""

    @abc.abstractmethod
    async def settle(
        self, owner: str, *, delivered: Sequence[int], fence: Sequence[int], now: float, lease_until: float
    ) -> set[int]:
        """`delivered` for each of the first ids and `fence` for each of the others, in one
        transaction (one commit for the copies of several lanes); returns the fenced ids still held."""

    @abc.abstractmethod
    async def release(self, item_ids: Sequence[int], owner: str) -> None:
        """Give back leases whose copies were not sent (a graceful stop): fenced or not, their send
        is not marked as begun any more."""

    @abc.abstractmethod
    async def delivered(self, item_id: int, owner: str) -> None: ...

    @abc.abstractmethod
    async def retry_later(
        self,
        item_id: int,
        owner: str,
        *,
        next_attempt_at: float,
        error: str,
        rcpt_tos: Sequence[str] | None = None,
        uncertain: bool = False,
    ) -> None:
        """Back to the queue, for `rcpt_tos` only when given (the rest was delivered), counting an
        uncertain attempt when the upstream may have accepted it."""

    @abc.abstractmethod
    async def give_up(self, item_id: int, owner: str, *, error: str) -> None: ...

    @abc.abstractmethod
    async def depth(self) -> int: ...


class QuarantineStore(abc.ABC):
    @abc.abstractmethod
    async def hold(self, item: QuarantineItem) -> None: ...

    @abc.abstractmethod
    async def get(self, item_id: str, *, with_content: bool = False) -> QuarantineItem | None: ...

    @abc.abstractmethod
    async def list(
        self,
        *,
        account: str | None = None,
        rule: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[QuarantineItem], str | None]: ...

    @abc.abstractmethod
    async def set_status(self, item_id: str, status: str, audit: AuditEntry) -> bool:
        """Move a held message to released/deleted with its audit entry; False if not held."""

    @abc.abstractmethod
    async def claim_release(self, item_id: str, at: datetime | None = None) -> QuarantineItem | None:
        """Move a held message to `releasing` (claimed `at`) in one conditional UPDATE and return it with
        its content; None when it is not held: released, deleted, purged, or being released elsewhere."""

    @abc.abstractmethod
    async def unclaim_release(self, item_id: str) -> None:
        """Its delivery failed: put a `releasing` message back to held."""

    @abc.abstractmethod
    async def finish_release(self, item_id: str, audit: AuditEntry) -> bool:
        """Move a `releasing` message to released with its audit entry; False if it is not releasing."""

    @abc.abstractmethod
    async def count(self) -> int: ...

    @abc.abstractmethod
    async def purge_older_than(self, when: datetime, audit_actor: str) -> int: ...

    @abc.abstractmethod
    async def reclaim_abandoned(self, claimed_before: datetime, audit_actor: str, at: datetime) -> list[str]:
        """Give back to held, audited, the messages a release claimed before `claimed_before` and never
        finished (its process was killed): held mail is never stuck out of sight."""

    @abc.abstractmethod
    async def counts(
        self, *, since: datetime | None = None, before: datetime | None = None
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Held messages received in [since, before), by rule and by account (GROUP BY queries)."""


class AuditStore(abc.ABC):
    @abc.abstractmethod
    async def add(self, entry: AuditEntry) -> None: ...

    @abc.abstractmethod
    async def list(self, *, limit: int = 100, target: str | None = None) -> list[AuditEntry]: ...


class RateStore(abc.ABC):
    @abc.abstractmethod
    async def take(self, key: str, *, rate_per_minute: int, now: float) -> bool:
        """Take one token from the shared bucket; False when empty."""


class Store(abc.ABC):
    accounts: AccountStateStore
    consent: ConsentStore
    decisions: DecisionStore
    outbox: OutboxStore
    quarantine: QuarantineStore
    audit: AuditStore
    rates: RateStore
    complaints: ComplaintStore
    events: EventStore
    webhooks: WebhookStateStore
    bounces: BounceStore
    signups: SignupStore

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and run migrations (safe when several instances start at once)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot answer."""

    async def check_writable(self) -> None:
        """Raise StoreUnavailable when the store answers but cannot take a write (disk full, read-only):
        /readyz must not call a relay ready that would accept mail and then fail to keep it.
        The probe is a real write transaction: a reservation of no ids under a name of its own."""
        await self.decisions.reserve_ids("_readiness", 0)
