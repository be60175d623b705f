"""`consent-relay account pause|suspend|resume ID --reason …`: every state change needs a reason (it is
audited with it); without one the command exits 2 and changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import cli_run, make_config

from relay.services import Services


def state_and_audit(config_path: Path) -> tuple[str, list[tuple[str, str]]]:
    from relay.config import load_config

    async def read() -> tuple[str, list[tuple[str, str]]]:
        services = Services.build(load_config(config_path))
        await services.store.open()
        try:
            state = await services.store.accounts.get("shop")
            audit = await services.store.audit.list(target="shop")
            return state.state, [(a.action, a.note) for a in reversed(audit)]
        finally:
            await services.store.close()

    return asyncio.run(read())


@pytest.mark.parametrize("action", ["pause", "suspend", "resume"])
def test_a_state_change_without_a_reason_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str) -> None:
    cfg = str(make_config(tmp_path).path)
    assert cli_run(["account", "suspend", "shop", "--reason", "spam run", "-c", cfg], capsys)[0] == 0
    code, out, err = cli_run(["account", action, "shop", "-c", cfg], capsys)
    assert code == 2 and out == "", (out, err)
    assert "--reason" in err and "Traceback" not in err
    code, out, err = cli_run(["account", action, "shop", "--reason", "  ", "-c", cfg], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--reason" in err, (out, err)
    # Still suspended, and only the one change with its reason in the audit log.
    assert state_and_audit(Path(cfg)) == ("suspended", [("account.suspended", "spam run")])


def test_resume_with_a_reason_is_audited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(make_config(tmp_path).path)
    assert cli_run(["account", "pause", "shop", "--reason", "complaint review", "-c", cfg], capsys)[0] == 0
    code, out, _ = cli_run(["account", "resume", "shop", "--reason", "list cleaned", "-c", cfg], capsys)
    assert code == 0 and out == "shop: active (list cleaned)\n"
    assert state_and_audit(Path(cfg)) == ("active", [("account.paused", "complaint review"), ("account.active", "list cleaned")])
