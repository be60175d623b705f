"""The helper process (`[smtp] helper_process`): policy verdicts and DKIM's private-key step off the
event loop, with the same results as inline, and no mail lost or held when the helper dies or hangs."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingUpstream, ServeProcess, asend, config_dict, make_config, message, until, write_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from policies.message import parse_message
from relay.config import helper_enabled
from relay.delivery.dkim import DkimKey, DkimSigner, dkim_dns_record, load_dkim_key
from relay.engine import helper as helper_module
from relay.engine.helper import Helper, HelperJobFailed, HelperUnavailable
from relay.errors import ConfigError
from tests.e2e.test_unsubscribe_e2e import perl_verify

ON = {"helper_process": True}  # not left to "auto": these tests need the helper on any machine
ADULT = "Hot XXX porn, adult sex videos for you. Naked."


def jobs(relay: Any, job: str, ran: str) -> float | None:
    return relay.services.metrics.registry.get_sample_value("consent_relay_helper_jobs_total", {"work": job, "ran": ran})


def held(outcome: Any) -> bool:
    """Quarantined by content.adult (strict profile): the engine ran, wherever it ran."""
    return outcome.code == 250 and "Held for review" in outcome.text and "content.adult" in outcome.text


def _pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def key_paths(tmp_path: Path) -> dict[str, Path]:
    paths = {"rsa": tmp_path / "rsa.pem", "ed": tmp_path / "ed.pem"}
    paths["rsa"].write_bytes(_pem(rsa.generate_private_key(65537, 2048)))
    paths["ed"].write_bytes(_pem(ed25519.Ed25519PrivateKey.generate()))
    return paths


def keys_of(paths: dict[str, Path]) -> list[DkimKey]:
    return [load_dkim_key("shop.example", name, path) for name, path in paths.items()]


def dkim_config(tmp_path: Path, port: int, paths: dict[str, Path], **overrides: Any) -> Any:
    keys = [{"domain": "shop.example", "selector": n, "private_key": str(p)} for n, p in paths.items()]
    return make_config(tmp_path, port, dkim={"keys": keys}, smtp=ON, **overrides)


def records(paths: dict[str, Path]) -> list[str]:
    return [f"{k.selector}._domainkey.{k.domain} {dkim_dns_record(k)}\n" for k in keys_of(paths)]


def test_a_parsed_message_pickles_as_its_bytes() -> None:
    parsed = parse_message(message(subject="Hallo"))
    again = pickle.loads(pickle.dumps(parsed))
    assert again.raw == parsed.raw and again.subject == "Hallo" and again.text == parsed.text


async def test_helper_signs_exactly_as_inline(key_paths: dict[str, Path]) -> None:
    keys = keys_of(key_paths)
    helper = Helper({"dkim_keys": [k.pem() for k in keys]})
    await helper.start()
    try:
        job = DkimSigner(keys).prepare(message(), now=1_700_000_000)
        assert job is not None
        remote = await helper.call("sign", [(i, d) for i, d in enumerate(job.digests)])
        # PKCS#1 v1.5 is deterministic, so the RSA b= must match byte for byte; Ed25519 too (RFC 8032).
        assert remote == [k.sign_digest(d) for k, d in zip(keys, job.digests)]
    finally:
        await helper.close()
    assert not helper.alive


async def test_a_job_that_raises_in_the_helper_raises_here_and_the_helper_lives_on() -> None:
    helper = Helper({"dkim_keys": []})
    await helper.start()
    try:
        with pytest.raises(HelperJobFailed, match="IndexError"):
            await helper.call("sign", [(0, b"\0" * 32)])
        with pytest.raises(HelperJobFailed, match="no engine"):
            await helper.call("message", None, ())
        assert helper.alive
    finally:
        await helper.close()


async def test_verdicts_come_from_the_helper(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp=ON))
    assert relay.helper is not None and relay.helper.alive
    relay.pipeline.offload_from = 1  # even a lone transaction

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluated on the event loop")

    monkeypatch.setattr(relay.services.engine, "message", broken)
    assert (await asend(relay.smtp_port, message())).code == 250
    assert held(await asend(relay.smtp_port, message(body=ADULT)))
    assert len(upstream.messages) == 1


async def test_a_lone_transaction_is_evaluated_and_signed_on_the_loop(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, key_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop has nothing else to do meanwhile: a round trip to the helper would only add latency.
    relay = await start_relay(dkim_config(tmp_path, upstream.port, key_paths))
    calls: list[str] = []

    async def call(kind: str, *args: Any) -> Any:
        calls.append(kind)
        raise HelperUnavailable("not expected")

    monkeypatch.setattr(relay.helper, "call", call)
    assert (await asend(relay.smtp_port, message())).code == 250
    assert held(await asend(relay.smtp_port, message(body=ADULT)))
    assert calls == []
    assert jobs(relay, "verdict", "loop") == 2 and jobs(relay, "sign", "loop") == 1
    assert perl_verify(upstream.messages[0].content, records(key_paths), tmp_path) == "pass"
    # Under concurrency the helper is used.
    relay.pipeline.offload_from = 1
    assert (await asend(relay.smtp_port, message())).code == 250
    assert calls == ["message", "sign"]


async def test_without_the_helper_the_loop_evaluates(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"helper_process": False}))  # off whatever the cores
    assert relay.helper is None
    assert (await asend(relay.smtp_port, message())).code == 250
    monkeypatch.setattr(relay.services.engine, "message", lambda *a, **k: 1 / 0)
    assert (await asend(relay.smtp_port, message())).code == 451


async def test_copies_are_signed_in_the_helper_and_verify(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, key_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await start_relay(dkim_config(tmp_path, upstream.port, key_paths))
    relay.pipeline.offload_from = 1
    monkeypatch.setattr(DkimKey, "sign_digest", lambda self, digest: b"inline")
    assert (await asend(relay.smtp_port, message())).code == 250
    (copy,) = upstream.messages
    assert copy.content.count(b"DKIM-Signature:") == 2
    assert perl_verify(copy.content, records(key_paths), tmp_path) == "pass"


async def test_a_killed_helper_costs_no_mail_and_comes_back(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, key_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helper_module, "RESTART_SECONDS", 0.5)
    relay = await start_relay(dkim_config(tmp_path, upstream.port, key_paths))
    relay.pipeline.offload_from = 1
    first = relay.helper.pid
    os.kill(first, signal.SIGKILL)
    await until(lambda: not relay.helper.alive, what="helper seen dead")
    # Down: the loop does the work, with the same verdicts and valid signatures.
    assert (await asend(relay.smtp_port, message())).code == 250
    assert held(await asend(relay.smtp_port, message(body=ADULT)))
    assert perl_verify(upstream.messages[-1].content, records(key_paths), tmp_path) == "pass"
    # Restarted on a later message once the pause is over.
    await asyncio.sleep(0.6)
    assert (await asend(relay.smtp_port, message())).code == 250
    assert relay.helper.alive and relay.helper.pid != first and relay.helper.restarts == 1
    assert (await asend(relay.smtp_port, message())).code == 250
    assert len(upstream.messages) == 3  # the held one is not among them
    assert jobs(relay, "verdict", "fallback") == 2 and jobs(relay, "sign", "fallback") == 1
    assert jobs(relay, "verdict", "helper") == 2 and jobs(relay, "sign", "helper") == 2
    assert relay.services.metrics.registry.get_sample_value("consent_relay_helper_restarts_total") == 1
    assert all(perl_verify(m.content, records(key_paths), tmp_path) == "pass" for m in upstream.messages)


async def test_a_hung_helper_is_killed_and_its_message_tempfailed_not_redone_on_the_loop(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helper_module, "RESTART_SECONDS", 0.5)
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp=ON))
    relay.pipeline.offload_from = 1
    assert (await asend(relay.smtp_port, message())).code == 250  # warm: the child has imported
    # A short deadline only for the message that finds the helper stopped: a child that starts
    # slowly on a loaded machine (its imports take a second or more) is not a hung one.
    patient, relay.helper.timeout = relay.helper.timeout, 0.5
    hung = relay.helper.pid
    os.kill(hung, signal.SIGSTOP)
    try:
        out = await asend(relay.smtp_port, message(body=ADULT))
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # The message that may have wedged it is refused for now, and its client will retry.
    assert out.code == 451 and "policy check timed out" in out.text, out
    relay.helper.timeout = patient
    await until(lambda: not relay.helper.alive, what="hung helper killed")
    await relay.recorder.flush()
    assert relay.services.metrics.registry.get_sample_value(
        "consent_relay_messages_total", {"account": "shop", "stream": "orders", "outcome": "tempfailed"}
    ) == 1
    await asyncio.sleep(0.6)
    assert held(await asend(relay.smtp_port, message(body=ADULT)))  # the retry, in a new helper
    assert relay.helper.pid != hung and relay.helper.restarts == 1
    assert len(upstream.messages) == 1


async def test_a_closed_helper_refuses_jobs() -> None:
    helper = Helper({})
    await helper.start()
    await helper.close()
    with pytest.raises(HelperUnavailable):
        await helper.call("sign", [])


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_the_helper_ends_with_its_relay(tmp_path: Path, upstream: RecordingUpstream, how: str) -> None:
    serve = ServeProcess(write_config(tmp_path, config_dict(tmp_path, upstream.port, smtp=ON)))
    try:
        await serve.start()
        (started,) = serve.events("helper_started")
        pid = started["pid"]
        assert _running(pid)
        assert serve.proc is not None
        serve.proc.send_signal(getattr(signal, how))
        code = await serve.proc.wait()
        assert code == (0 if how == "SIGTERM" else -signal.SIGKILL)
        await until(lambda: not _running(pid), what="helper gone")  # EOF on its stdin ends it
    finally:
        await serve.ensure_stopped()
    if how == "SIGTERM":
        assert serve.events("helper_exited") == []  # a clean stop is not an error


@pytest.mark.parametrize(
    ("value", "workers", "cpus", "enabled"),
    [(True, 2, 2, True), (False, 1, 8, False), ("auto", 1, 2, True), ("auto", 2, 2, False), ("auto", 1, 1, False)],
)
def test_helper_process_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: Any, workers: int, cpus: int, enabled: bool
) -> None:
    config = make_config(tmp_path, smtp={"helper_process": value, "workers": workers})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert helper_enabled(config.smtp) is enabled


def test_helper_process_setting_rejects_other_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="smtp.helper_process") as caught:
        make_config(tmp_path, smtp={"helper_process": "yes"})
    assert 'true, false or "auto"' in str(caught.value)
