"""The helper process's own end (`python -m relay.engine.helper_child`, started by relay.engine.helper).

Reads a setup frame, then jobs, from stdin; answers each on stdout, in order. Exits at EOF: the
relay closed the pipe or is gone. Only pure work runs here: no store, no network, no logging of
message content.
"""

from __future__ import annotations

import signal

# Ctrl-C and a SIGTERM to the process group reach the relay too, which drains its sessions (using
# us meanwhile) and then closes our stdin; EOF also ends us if the relay is killed. Set before the
# imports below, so that a Ctrl-C while they load does not print a traceback either.
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)

import pickle  # noqa: E402
import sys  # noqa: E402
from typing import Any, BinaryIO, Callable

from cryptography.hazmat.primitives import serialization  # noqa: E402

from relay.delivery.dkim import sign_digest  # noqa: E402
from relay.engine.helper import FRAME  # noqa: E402


def _read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def handlers(setup: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    from policies.engine import Engine
    from policies.registry import ALL_RULES

    # The relay's engine is Engine(ALL_RULES, profile) too (relay.services): the same rules run here.
    engine = Engine(ALL_RULES, setup["profile"]) if "profile" in setup else None
    keys = [serialization.load_pem_private_key(pem, password=None) for pem in setup.get("dkim_keys", ())]

    def message(facts: Any, recipients: Any, skip: Any = ()) -> Any:
        assert engine is not None, "no engine in the helper's setup"
        return engine.message(facts, recipients, skip=skip)

    def sign(jobs: list[tuple[int, bytes]]) -> list[bytes]:
        """One b= value per (key index, SHA-256 digest of the DKIM header data)."""
        return [sign_digest(keys[index], digest) for index, digest in jobs]  # type: ignore[arg-type]

    return {"message": message, "sign": sign}


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    setup = _read_frame(stdin)
    if setup is None:
        return 0
    table = handlers(pickle.loads(setup))
    while (frame := _read_frame(stdin)) is not None:
        job_id, kind, args = pickle.loads(frame)
        try:
            body = pickle.dumps((job_id, True, table[kind](*args)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # the parent raises HelperJobFailed with this text
            body = pickle.dumps((job_id, False, f"{type(exc).__name__}: {exc}"))
        stdout.write(FRAME.pack(len(body)) + body)
        stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
