"""Re-importing consent must not undo what happened since: revocations stay, dates move forward."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from policies.facts import ConsentRecord
from relay.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)


def record(**changes: object) -> ConsentRecord:
    base = dict(
        email="anna@example.nl", scope="shop", topic="*", basis="double_opt_in", source="signup_form",
        collected_at=T0, confirmed_at=T0, source_url="https://shop.example/signup", source_ip="192.0.2.1",
        statement_text="Ja, de nieuwsbrief", frequency_disclosed=True,
    )
    base.update(changes)
    return ConsentRecord(**base)  # type: ignore[arg-type]


async def test_reimport_keeps_revocation_and_newer_dates(tmp_path: Path) -> None:
    # policy: clang E-direct-en-permanent ("direct en permanent verwijdert")
    store = SqliteStore(tmp_path / "r.db")
    await store.open()
    try:
        assert await store.consent.upsert_consents([record()], now=T0) == (1, 0)
        later = T0 + timedelta(days=40)
        await store.consent.touch(["shop"], "anna@example.nl", "click", later)
        await store.consent.revoke("shop", "anna@example.nl", None, via="one_click", at=later + timedelta(days=1))
        # The same file again: nothing changes, the unsubscribe stands.
        assert await store.consent.upsert_consents([record()], now=T0 + timedelta(days=50)) == (0, 1)
        (found,) = (await store.consent.find_consents(["shop"], ["anna@example.nl"]))["anna@example.nl"]
        assert found.revoked_via == "one_click" and found.revoked_at is not None
        assert found.last_interaction_at == later
        # Consent given again after the revocation (a new signup) does revive the record.
        renewed = record(collected_at=later + timedelta(days=60), confirmed_at=later + timedelta(days=60))
        assert await store.consent.upsert_consents([renewed], now=later + timedelta(days=60)) == (1, 0)
        (found,) = (await store.consent.find_consents(["shop"], ["anna@example.nl"]))["anna@example.nl"]
        assert found.revoked_at is None
    finally:
        await store.close()
