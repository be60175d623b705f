"""The per-account message rate (account.rate_limited, docs/SPEC.md §4) against a real relay: a token bucket
in the store, taken at MAIL FROM; the clock is injected, so the minute passes without sleeping."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import PASSWORD, Clocked, RecordingUpstream, asend, base_account, config_dict, message, write_config

from relay.accounts import change_account_state
from relay.config import load_config
from relay.errors import StoreUnavailable

T0 = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
LIMIT = 3
LIMITED = f"[account.rate_limited] Account shop is over its rate of {LIMIT} messages per minute; try again later"


@pytest.fixture
def clocked() -> Clocked:
    return Clocked(T0)


@pytest.fixture
async def relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    # store_url first: its schema is dropped only after the relay stopped
    # A second account without a limit ("other", by AUTH) shows the bucket is per account.
    other = {**base_account(), "id": "other", "trusted_networks": [], "domains": ["other.example"]}
    data = config_dict(
        tmp_path, upstream.port, store={"url": store_url}, smtp={"auth_require_tls": False},
        account={"rate_limit_per_minute": LIMIT},
    )
    data["accounts"].append(other)
    return await start_relay(load_config(write_config(tmp_path, data)), clock=clocked.clock())


async def send_other(relay: Any) -> Any:
    return await asend(
        relay.smtp_port, message(sender="app@other.example"), mail_from="app@other.example", login=("other", PASSWORD)
    )


async def test_over_the_limit_within_a_minute_is_451_rate_limited(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: platform (protection of the relay and its upstream; POLICY.md account.rate_limited)
    with structlog.testing.capture_logs() as logs:
        outcomes = [await asend(relay.smtp_port) for _ in range(LIMIT + 2)]
    assert [o.code for o in outcomes] == [250] * LIMIT + [451, 451], outcomes
    for refused in outcomes[LIMIT:]:
        # refused at the first RCPT, before DATA (MAIL FROM is taken: docs/SPEC.md §15, own addresses from anyone)
        assert refused.mail[0] == 250 and refused.rcpts == [(451, f"4.7.1 {LIMITED}")], refused
        assert refused.data is None
    assert len(upstream.messages) == LIMIT

    # Another account has its own bucket (and no limit): it is not held up by this one.
    assert (await send_other(relay)).code == 250

    metric = relay.services.metrics.registry.get_sample_value
    assert metric("consent_relay_rule_hits_total", {"rule": "account.rate_limited", "action": "tempfail"}) == 2
    # Each refusal is a decision of its own, in the log and in the decisions table.
    refusals = [e for e in logs if e["event"] == "decision" and e["outcome"] == "tempfailed"]
    assert [e["rules"] for e in refusals] == [["account.rate_limited"]] * 2
    await relay.recorder.flush()
    (row,) = await relay.services.store.decisions.for_relay_id(refusals[0]["relay_id"])
    assert row.account == "shop" and row.rules == ("account.rate_limited",)


async def test_the_bucket_refills_at_the_rate(relay: Any, upstream: RecordingUpstream, clocked: Clocked) -> None:
    # policy: platform — a token every 60/limit seconds, never more than the limit at once
    assert [(await asend(relay.smtp_port)).code for _ in range(LIMIT + 1)] == [250] * LIMIT + [451]
    clocked.advance(seconds=60 / LIMIT)  # one token back
    assert [(await asend(relay.smtp_port)).code for _ in range(2)] == [250, 451]
    clocked.advance(minutes=10)  # a long pause refills to the limit, not beyond it
    assert [(await asend(relay.smtp_port)).code for _ in range(LIMIT + 1)] == [250] * LIMIT + [451]
    assert len(upstream.messages) == 2 * LIMIT + 1


async def test_bucket_failure_is_a_tempfail_never_a_pass(
    relay: Any, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(*args: Any, **kwargs: Any) -> bool:
        raise StoreUnavailable("store write failed: database is locked")

    monkeypatch.setattr(relay.services.store.rates, "take", unavailable)
    out = await asend(relay.smtp_port)
    assert out.final[0] == 451 and out.final[1].startswith("4.3.0"), out
    assert upstream.messages == []


async def test_a_refused_mail_from_spends_no_token(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: platform — a suspended account keeps its 554 (mailpro M-violation), not a 451 retry signal
    await change_account_state(relay.services, "shop", "suspend", reason="spam run", actor="test")
    for _ in range(LIMIT + 1):
        out = await asend(relay.smtp_port)
        assert out.final[0] == 554 and "[account.suspended]" in out.final[1], out
    await change_account_state(relay.services, "shop", "resume", reason="cleaned up", actor="test")
    # The bucket is still full: the refused attempts took nothing from it.
    assert [(await asend(relay.smtp_port)).code for _ in range(LIMIT + 1)] == [250] * LIMIT + [451]
