"""Every part of the store over one relay/store/sql.py `Database`: the SQLite and PostgreSQL stores are this
store with their own connections."""

from __future__ import annotations

from relay.store import base
from relay.store.bounces import SqlBounces
from relay.store.complaints import SqlComplaints
from relay.store.events_store import SqlEvents
from relay.store.signups import SignupStore
from relay.store.sql import Database
from relay.store.tables import (
    SqlAccountStates,
    SqlAudit,
    SqlConsents,
    SqlDecisions,
    SqlOutbox,
    SqlQuarantine,
    SqlRates,
)
from relay.store.webhooks_store import SqlWebhookStates


class SqlStore(base.Store):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.accounts = SqlAccountStates(db)
        self.consent = SqlConsents(db)
        self.decisions = SqlDecisions(db)
        self.outbox = SqlOutbox(db)
        self.quarantine = SqlQuarantine(db)
        self.audit = SqlAudit(db)
        self.rates = SqlRates(db)
        self.complaints = SqlComplaints(db)
        self.webhooks = SqlWebhookStates(db)
        self.events = SqlEvents(db)
        self.bounces = SqlBounces(db)
        self.signups = SignupStore(db)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetchone("SELECT 1")
