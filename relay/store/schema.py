"""Versioned schema migrations, written once for both stores: the type names in braces are the
dialect's (relay/store/sql.py, `Dialect.ddl_types`), everything else is portable SQL."""

from __future__ import annotations

from functools import cache

from relay.store.sql import Dialect, Transaction

# Each entry is one migration; never edit a released one, append a new one. Types: {ID} a generated
# primary key, {BIGINT} a 64-bit integer, {REAL} a float, {BLOB} bytes, {SORTED} text that is ordered
# or range-compared (byte order on both); `{{` and `}}` stand for a literal brace.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE account_state (
            account {SORTED} PRIMARY KEY,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            paused_streams TEXT NOT NULL DEFAULT '',
            updated_at {SORTED} NOT NULL
        )""",
        """CREATE TABLE consents (
            id {ID},
            scope TEXT NOT NULL,
            email TEXT NOT NULL,
            topic TEXT NOT NULL,
            basis TEXT NOT NULL,
            source TEXT NOT NULL,
            collected_at {SORTED},
            source_url TEXT NOT NULL DEFAULT '',
            source_ip TEXT NOT NULL DEFAULT '',
            confirmed_at {SORTED},
            statement_text TEXT NOT NULL DEFAULT '',
            co_registration_partners TEXT NOT NULL DEFAULT '',
            prechecked INTEGER NOT NULL DEFAULT 0,
            frequency_disclosed INTEGER NOT NULL DEFAULT 0,
            customer_relationship TEXT NOT NULL DEFAULT '',
            last_purchase_at {SORTED},
            informed_at_collection INTEGER NOT NULL DEFAULT 0,
            objection_offered INTEGER NOT NULL DEFAULT 0,
            email_contact_announced INTEGER NOT NULL DEFAULT 0,
            last_interaction_at {SORTED},
            revoked_at {SORTED},
            revoked_via TEXT NOT NULL DEFAULT '',
            created_at {SORTED} NOT NULL,
            updated_at {SORTED} NOT NULL,
            UNIQUE (email, scope, topic)
        )""",
        """CREATE TABLE suppressions (
            id {ID},
            scope TEXT NOT NULL,
            email TEXT NOT NULL,
            topic TEXT NOT NULL,
            reason TEXT NOT NULL,
            via TEXT NOT NULL DEFAULT '',
            note TEXT NOT NULL DEFAULT '',
            created_at {SORTED} NOT NULL,
            UNIQUE (email, scope, topic, reason)
        )""",
        """CREATE TABLE decisions (
            id {ID},
            relay_id TEXT NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            account TEXT NOT NULL DEFAULT '',
            stream TEXT NOT NULL DEFAULT '',
            mail_from TEXT NOT NULL DEFAULT '',
            recipients TEXT NOT NULL DEFAULT '[]',
            outcome TEXT NOT NULL,
            rules TEXT NOT NULL DEFAULT '[]',
            findings TEXT NOT NULL DEFAULT '[]',
            created_at {SORTED} NOT NULL
        )""",
        "CREATE INDEX decisions_relay_id ON decisions (relay_id)",
        # Ids come from reserve_ids (id_blocks), not from the table.
        """CREATE TABLE deliveries (
            id {BIGINT} PRIMARY KEY,
            relay_id TEXT NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            account TEXT NOT NULL,
            stream TEXT NOT NULL,
            scope TEXT NOT NULL DEFAULT '',
            topic TEXT NOT NULL DEFAULT '',
            email TEXT NOT NULL,
            consent_id {BIGINT},
            status TEXT NOT NULL,
            delivered_at {SORTED} NOT NULL
        )""",
        "CREATE INDEX deliveries_email ON deliveries (email, account)",
        "CREATE INDEX deliveries_message_id ON deliveries (message_id)",
        """CREATE TABLE id_blocks (
            name TEXT PRIMARY KEY,
            next_id {BIGINT} NOT NULL
        )""",
        """CREATE TABLE outbox (
            id {ID},
            relay_id TEXT NOT NULL,
            account TEXT NOT NULL,
            stream TEXT NOT NULL,
            mail_from TEXT NOT NULL,
            rcpt_tos TEXT NOT NULL,
            content {BLOB} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {REAL} NOT NULL,
            created_at {REAL} NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'pending',
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_until {REAL} NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at)",
        """CREATE TABLE audit (
            id {ID},
            at {SORTED} NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '{{}}'
        )""",
        "CREATE INDEX audit_at ON audit (at)",
        """CREATE TABLE quarantine (
            id {SORTED} PRIMARY KEY,
            relay_id TEXT NOT NULL,
            account TEXT NOT NULL,
            stream TEXT NOT NULL,
            mail_from TEXT NOT NULL,
            rcpt_tos TEXT NOT NULL,
            subject TEXT NOT NULL DEFAULT '',
            rules TEXT NOT NULL,
            findings TEXT NOT NULL,
            content {BLOB} NOT NULL,
            size {BIGINT} NOT NULL,
            received_at {SORTED} NOT NULL,
            status TEXT NOT NULL DEFAULT 'held'
        )""",
        "CREATE INDEX quarantine_list ON quarantine (status, received_at)",
        """CREATE TABLE rate_buckets (
            account TEXT PRIMARY KEY,
            tokens {REAL} NOT NULL,
            updated_at {REAL} NOT NULL
        )""",
    ),
    # 2: complaints (docs/SPEC.md §9) and the feedback reports refused as malformed, kept for inspection.
    (
        """CREATE TABLE complaints (
            id {ID},
            report_key TEXT NOT NULL UNIQUE,
            account TEXT NOT NULL,
            email TEXT NOT NULL,
            feedback_type TEXT NOT NULL,
            status TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at {SORTED} NOT NULL,
            arrived_at {SORTED},
            deadline {SORTED},
            message_id TEXT NOT NULL DEFAULT '',
            relay_id TEXT NOT NULL DEFAULT '',
            delivery_id {BIGINT},
            stream TEXT NOT NULL DEFAULT '',
            mapped_by TEXT NOT NULL DEFAULT '',
            reporter TEXT NOT NULL DEFAULT '',
            forwarded_to TEXT NOT NULL DEFAULT '',
            forwarded_at {SORTED},
            forward_error TEXT NOT NULL DEFAULT '',
            acknowledged_at {SORTED},
            acknowledged_by TEXT NOT NULL DEFAULT '',
            ack_note TEXT NOT NULL DEFAULT '',
            escalated_at {SORTED},
            report {BLOB} NOT NULL
        )""",
        "CREATE INDEX complaints_open ON complaints (status, deadline)",
        "CREATE INDEX complaints_account ON complaints (account, received_at)",
        """CREATE TABLE feedback_rejects (
            id {ID},
            source TEXT NOT NULL,
            reason TEXT NOT NULL,
            received_at {SORTED} NOT NULL,
            size {BIGINT} NOT NULL,
            report {BLOB} NOT NULL
        )""",
        "CREATE INDEX feedback_rejects_at ON feedback_rejects (received_at)",
        # The complaint rate counts an account's delivered recipients in a time window.
        "CREATE INDEX deliveries_account_time ON deliveries (account, delivered_at)",
    ),
    # 3: the quarantine counts of the admin UI (held per account and rule, in an age window) read
    # this index alone: at 100,000 held messages a scan of the table took over 100 ms.
    ("CREATE INDEX quarantine_counts ON quarantine (status, account, rules, received_at)",),
    # 4: every decision keeps the rules that ran without a finding too (the audit trail of misses).
    ("ALTER TABLE decisions ADD COLUMN misses TEXT NOT NULL DEFAULT '[]'",),
    # 5: when a release claimed the message, so a claim abandoned by a killed process is given back.
    ("ALTER TABLE quarantine ADD COLUMN claimed_at {SORTED}",),
    # 6: complaint sources (docs/SPEC.md §16): whether a report came from a configured feedback loop, and
    # whether it was a spam-trap hit; and the bounces table.
    (
        "ALTER TABLE complaints ADD COLUMN verified INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE complaints ADD COLUMN spam_trap INTEGER NOT NULL DEFAULT 0",
        # bounces (docs/SPEC.md §15): every DSN to bounce+ID@ and what it said about its recipient.
        """CREATE TABLE bounces (
            id {ID},
            account TEXT NOT NULL,
            email TEXT NOT NULL,
            kind TEXT NOT NULL,
            received_at {SORTED} NOT NULL,
            permanent INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL DEFAULT '',
            diagnostic TEXT NOT NULL DEFAULT '',
            delivery_id {BIGINT},
            relay_id TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '',
            report {BLOB} NOT NULL
        )""",
        "CREATE INDEX bounces_account ON bounces (account, id)",
        "CREATE INDEX bounces_email ON bounces (email, account, received_at)",
    ),
    # 7: account events (docs/SPEC.md §17), numbered per account in commit order (relay/store/events_store.py),
    # and each webhook endpoint's cursor into them (relay/store/webhooks_store.py).
    (
        """CREATE TABLE events (
            account {SORTED} NOT NULL,
            seq {BIGINT} NOT NULL,
            type TEXT NOT NULL,
            at {SORTED} NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (account, seq)
        )""",
        "CREATE INDEX events_at ON events (at)",
        "CREATE TABLE event_seq (account {SORTED} PRIMARY KEY, last {BIGINT} NOT NULL)",
        """CREATE TABLE webhook_state (
            account {SORTED} NOT NULL,
            endpoint TEXT NOT NULL,
            url TEXT NOT NULL,
            cursor {BIGINT} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {REAL} NOT NULL DEFAULT 0,
            failing_since {REAL},
            last_error TEXT NOT NULL DEFAULT '',
            disabled_at {REAL},
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_until {REAL} NOT NULL DEFAULT 0,
            PRIMARY KEY (account, endpoint)
        )""",
    ),
    # 8: the outbox fence (issue 21). `sending_since` is set when a holder's send to the upstream
    # begins and cleared when its outcome is recorded: a claimer that finds it set knows the copy
    # may have been accepted already. `uncertain` counts such attempts for the "maybe twice" log.
    (
        "ALTER TABLE outbox ADD COLUMN sending_since {REAL} NOT NULL DEFAULT 0",
        "ALTER TABLE outbox ADD COLUMN uncertain {BIGINT} NOT NULL DEFAULT 0",
    ),
    # 9: hosted double opt-in (docs/SPEC.md §18): each signup request, its confirmation mail and confirmation,
    # and one row per address and account that spaces confirmation mails `resend_after_hours` apart.
    (
        """CREATE TABLE signups (
            id {BIGINT} PRIMARY KEY,
            account TEXT NOT NULL,
            email TEXT NOT NULL,
            stream TEXT NOT NULL,
            scope TEXT NOT NULL,
            topic TEXT NOT NULL,
            statement TEXT NOT NULL,
            source_url TEXT NOT NULL,
            signup_ip TEXT NOT NULL,
            frequency TEXT NOT NULL DEFAULT '',
            language TEXT NOT NULL,
            requested_at {SORTED} NOT NULL,
            requested_by TEXT NOT NULL DEFAULT '',
            relay_id TEXT NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            mail_status TEXT NOT NULL DEFAULT 'queued',
            mail_at {SORTED},
            confirmed_at {SORTED},
            confirm_ip TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX signups_email ON signups (email, account)",
        "CREATE INDEX signups_relay_id ON signups (relay_id)",
        """CREATE TABLE signup_mails (
            account TEXT NOT NULL,
            email TEXT NOT NULL,
            last_sent_at {SORTED} NOT NULL,
            PRIMARY KEY (account, email)
        )""",
    ),
)


@cache
def migrations(dialect: Dialect) -> tuple[tuple[str, ...], ...]:
    """MIGRATIONS in the dialect's DDL."""
    return tuple(tuple(statement.format_map(dialect.ddl_types) for statement in m) for m in MIGRATIONS)


async def migrate(tx: Transaction, dialect: Dialect) -> None:
    """Bring the schema to the newest version inside the caller's transaction, which holds off any other
    instance migrating at the same moment: it then finds the new version and does nothing."""
    await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = await tx.fetchone("SELECT version FROM schema_version")
    if row is None:
        await tx.execute("INSERT INTO schema_version (version) VALUES (0)")
    version = int(row[0]) if row else 0
    for number, statements in enumerate(migrations(dialect), start=1):
        if number <= version:
            continue
        for statement in statements:
            await tx.execute(statement)
        await tx.execute("UPDATE schema_version SET version = ?", (number,))
