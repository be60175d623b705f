"""Account state changed by the CLI reaches a running relay at the next MAIL FROM (audited); every
decision is a row in the decisions table and one log line; /metrics, /healthz, /readyz."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from conftest import RecordingUpstream, asend, make_config, message, until

from relay.cli import main as cli


async def run_cli(*args: str) -> int:
    """The real `consent-relay` entry point, in a thread (it runs its own event loop)."""
    try:
        return await asyncio.to_thread(cli.main, list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


async def test_pause_suspend_resume_reach_running_relay(relay: Any, upstream: RecordingUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    # policy: clang E-campagne-gepauzeerd (account.paused), mailpro M-violation (account.suspended)
    path = str(relay.config.path)
    assert (await asend(relay.smtp_port)).code == 250

    assert await run_cli("account", "pause", "shop", "--reason", "complaint review", "-c", path) == 0
    out = await asend(relay.smtp_port)
    assert out.final[0] == 451 and out.final[1].startswith("4.7.1 [account.paused]"), out
    assert "complaint review" in out.final[1]

    assert await run_cli("account", "suspend", "shop", "--reason", "spam run", "-c", path) == 0
    out = await asend(relay.smtp_port)
    assert out.final[0] == 554 and out.final[1].startswith("5.7.1 [account.suspended]"), out

    assert await run_cli("account", "resume", "shop", "--reason", "fixed", "-c", path) == 0
    assert (await asend(relay.smtp_port)).code == 250
    assert len(upstream.messages) == 2

    capsys.readouterr()
    assert await run_cli("account", "status", "shop", "--json", "-c", path) == 0
    assert '"state": "active"' in capsys.readouterr().out

    audit = await relay.services.store.audit.list(target="shop")
    trail = [(a.action, a.actor, a.note) for a in reversed(audit)]
    assert trail == [
        ("account.paused", "cli", "complaint review"),
        ("account.suspended", "cli", "spam run"),
        ("account.active", "cli", "fixed"),
    ]


async def test_pause_one_stream(relay: Any, upstream: RecordingUpstream) -> None:
    path = str(relay.config.path)
    assert await run_cli("account", "pause", "shop", "--stream", "orders", "--reason", "campaign check", "-c", path) == 0
    out = await asend(relay.smtp_port)
    assert out.code == 451 and out.text.startswith("4.7.1 [account.paused]"), out
    assert upstream.messages == []


async def test_unknown_account_is_exit_2(relay: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("account", "pause", "nobody", "--reason", "x", "-c", str(relay.config.path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nobody" in err


async def test_every_decision_is_a_row_and_a_log_line(relay: Any, upstream: RecordingUpstream) -> None:
    with structlog.testing.capture_logs() as logs:
        delivered = await asend(relay.smtp_port, rcpts=["anna@example.nl", "bob@example.nl"])
        rejected = await asend(relay.smtp_port, message(stream="nope"))
        refused_at_mail = await asend(relay.smtp_port, mail_from="x@other.example")
    assert delivered.code == 250 and rejected.code == 550 and refused_at_mail.final[0] == 550 and refused_at_mail.mail[0] == 250
    relay_id = re.search(r"Delivered as (\w+)", delivered.text).group(1)  # type: ignore[union-attr]

    (row,) = await until(lambda: relay.services.store.decisions.for_relay_id(relay_id), what="decision row")
    assert row.outcome == "delivered" and row.account == "shop" and row.stream == "orders"
    assert sorted(row.recipients) == ["anna@example.nl", "bob@example.nl"]
    assert row.message_id.endswith("@shop.example>") and row.rules == () and row.created_at is not None
    # The misses are kept too: every rule that ran and found nothing (docs/STYLE.md: "every hit and miss").
    assert {"identity.sender_not_authorized", "stream.unknown", "account.suspended", "content.malware"} <= set(row.misses)

    lines = [e for e in logs if e["event"] == "decision"]
    assert [e["outcome"] for e in lines] == ["delivered", "rejected", "rejected"]
    assert lines[0]["relay_id"] == relay_id and lines[0]["stream"] == "orders"
    assert lines[1]["rules"] == ["stream.unknown"]
    assert "identity.sender_not_authorized" in lines[2]["rules"]
    for entry in lines:  # every decision also reached the table
        await until(lambda: relay.services.store.decisions.for_relay_id(entry["relay_id"]), what=entry["relay_id"])
    (bad,) = await relay.services.store.decisions.for_relay_id(lines[1]["relay_id"])
    assert bad.outcome == "rejected" and bad.rules == ("stream.unknown",)
    assert bad.findings and bad.findings[0]["rule"] == "stream.unknown"
    assert "stream.unknown" not in bad.misses and "identity.sender_not_authorized" in bad.misses
    (at_mail,) = await relay.services.store.decisions.for_relay_id(lines[2]["relay_id"])
    assert "identity.sender_not_authorized" in at_mail.rules and "account.suspended" in at_mail.misses


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()


SPEC_METRICS = (
    "messages_total", "recipients_total", "rule_hits_total", "upstream_seconds", "policy_seconds", "message_bytes",
    "smtp_connections", "quarantine_messages", "outbox_messages", "unsubscribes_total", "complaints_total",
    "account_state", "consent_records",
)


async def test_metrics_have_spec_names_and_bounded_labels(relay: Any, upstream: RecordingUpstream) -> None:
    assert (await asend(relay.smtp_port, rcpts=["anna@example.nl", "bob@example.nl"])).code == 250
    assert (await asend(relay.smtp_port, message(stream="nope"))).code == 550
    status, text = await http_get(relay.admin_port, "/metrics")
    assert status == 200
    for name in SPEC_METRICS:
        assert f"# TYPE consent_relay_{name} " in text, name
    assert 'consent_relay_messages_total{account="shop",outcome="delivered",stream="orders"} 1.0' in text
    assert 'consent_relay_recipients_total{account="shop",outcome="delivered",stream="orders"} 2.0' in text
    assert 'consent_relay_rule_hits_total{action="reject",rule="stream.unknown"} 1.0' in text
    assert "consent_relay_upstream_seconds_count 1.0" in text
    labels = re.findall(r'="([^"]*)"', text)
    assert labels and not any("@" in value for value in labels)  # never an address in a label
    # A stream name a client wrote in X-Relay-Stream is not a label value: only configured ids are.
    assert 'stream="nope"' not in text
    assert 'consent_relay_messages_total{account="shop",outcome="rejected",stream="unknown"} 1.0' in text
    assert '=""' not in text  # "no value" is spelled "unknown" (relay.metrics.NO_VALUE), never ""


async def test_healthz_and_readyz(relay: Any, upstream: RecordingUpstream) -> None:
    status, text = await http_get(relay.admin_port, "/healthz")
    assert status == 200 and '"ok"' in text
    status, text = await http_get(relay.admin_port, "/readyz")
    assert status == 200 and '"ready": true' in text


async def test_readyz_says_why_when_upstream_is_down(tmp_path: Path, start_relay: Any) -> None:
    up = RecordingUpstream()
    relay = await start_relay(make_config(tmp_path, up.port))
    status, text = await http_get(relay.admin_port, "/readyz")
    assert status == 503 and '"upstream": {"ok": false' in text and str(up.port) in text, text
    up.start()
    try:
        status, text = await http_get(relay.admin_port, "/readyz")
        assert status == 200, text  # re-probed on request once it answers
    finally:
        up.stop()


async def test_readyz_says_why_when_store_is_down(relay: Any, upstream: RecordingUpstream) -> None:
    await relay.services.store.close()
    status, text = await http_get(relay.admin_port, "/readyz")
    assert status == 503 and '"store": {"ok": false' in text, text
    await relay.services.store.open()


async def test_refusals_at_rcpt_are_recorded_without_data(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    streams = [{"id": "news", "kind": "marketing", "envelope_from": ["news@shop.example"]}]
    relay = await start_relay(make_config(tmp_path, upstream.port, account={"streams": streams, "default_stream": "news"}))
    out = await asend(relay.smtp_port, message(sender="news@shop.example"), mail_from="news@shop.example")
    assert out.rcpts[0][0] == 550 and "[consent.missing]" in out.rcpts[0][1] and out.data is None, out

    async def recorded() -> list[Any]:  # the relay id is not in a RCPT reply: read the SQLite table directly
        return await relay.services.store.db.fetchall("SELECT * FROM decisions WHERE rules LIKE '%consent.missing%'")

    (row,) = await until(recorded, timeout=3, what="a decision row for the RCPT refusal")
    assert row["outcome"] == "rejected" and row["account"] == "shop" and row["stream"] == "news"
    assert "anna@example.nl" in row["recipients"]


async def test_monitor_mode_delivers_and_counts_what_it_would_refuse(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any
) -> None:
    """`mode = "monitor"`: a message the policy would hold is delivered, its hit logged and counted
    with action monitor; an admin's suspension still holds (monitor is a roll-out switch)."""
    relay = await start_relay(make_config(tmp_path, upstream.port, policy={"mode": "monitor"}))
    with structlog.testing.capture_logs() as logs:
        out = await asend(relay.smtp_port, message(subject="Wat een klote weer"))
    assert out.code == 250 and out.text.startswith("2.0.0 Delivered"), out
    assert len(upstream.messages) == 1
    (line,) = [e for e in logs if e["event"] == "decision"]
    assert line["outcome"] == "delivered" and line["rules"] == ["content.offensive_subject"]
    _, text = await http_get(relay.admin_port, "/metrics")
    assert 'consent_relay_rule_hits_total{action="monitor",rule="content.offensive_subject"} 1.0' in text

    path = str(relay.config.path)
    assert await run_cli("account", "suspend", "shop", "--reason", "spam run", "-c", path) == 0
    refused = await asend(relay.smtp_port)
    assert refused.final[0] == 554 and "[account.suspended]" in refused.final[1], refused
    assert len(upstream.messages) == 1
