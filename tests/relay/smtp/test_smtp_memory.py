"""An ended SMTP session leaves nothing for the cycle collector (issue 21, memory after outages).

aiosmtpd's session is a web of cycles: the protocol holds its bound command methods, its stream
writer, its handler task, and the task's CancelledError holds the frames that hold the protocol.
Freed only by the cyclic GC, the sessions of a retry burst (alive long enough to reach the oldest
generation) stayed in memory until a full collection, which may not come for hours: about 10 MiB a
worker after a 5-minute outage. The relay breaks those cycles when a session ends, so reference
counting frees it at once. Here the collector is off: whatever is still alive was kept by a cycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import weakref
from typing import Any

import aiosmtplib
from conftest import SENDER, RecordingUpstream, message, until

from relay.smtp.server import RelaySMTP

SESSIONS = 40


async def _sessions(relay: Any, upstream: RecordingUpstream, *, quit: bool, send: bool) -> list[weakref.ref[RelaySMTP]]:
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=10) for _ in range(SESSIONS)]
    await asyncio.gather(*(c.connect() for c in clients))
    await until(lambda: relay.limits.total == SESSIONS, what="every session admitted")
    refs = [weakref.ref(s) for s in relay.limits.sessions]
    if send:
        await asyncio.gather(
            *(c.sendmail(SENDER, ["anna@example.nl"], message(subject=f"s{i}")) for i, c in enumerate(clients))
        )
    for c in clients:
        if quit:
            await c.quit()
        else:
            c.close()  # the client goes away without QUIT, as a cut connection does
    await until(lambda: relay.limits.total == 0, what="every session ended")
    return refs


async def _reset_sessions(relay: Any) -> list[weakref.ref[RelaySMTP]]:
    """Clients that vanish with a TCP reset: the session ends with a connection error."""
    socks = [socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=10) for _ in range(SESSIONS)]
    await until(lambda: relay.limits.total == SESSIONS, what="every session admitted")
    refs = [weakref.ref(s) for s in relay.limits.sessions]
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    await until(lambda: relay.limits.total == 0, what="every session ended")
    return refs


async def _alive(refs: list[weakref.ref[RelaySMTP]]) -> int:
    # The handler tasks finish on the loop's next turns after the connections are lost.
    for _ in range(20):
        if not any(r() is not None for r in refs):
            return 0
        await asyncio.sleep(0.05)
    return sum(r() is not None for r in refs)


async def test_ended_sessions_are_freed_without_the_cycle_collector(
    relay: Any, upstream: RecordingUpstream, caplog: Any
) -> None:
    gc.collect()
    gc.disable()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            cut = await _sessions(relay, upstream, quit=False, send=False)
            finished = await _sessions(relay, upstream, quit=True, send=True)
            reset = await _reset_sessions(relay)
            alive = [await _alive(cut), await _alive(finished), await _alive(reset)]
    finally:
        gc.enable()
    assert len(upstream.messages) == SESSIONS
    assert alive == [0, 0, 0], f"kept by cycles: {alive[0]} cut, {alive[1]} finished, {alive[2]} reset sessions"
    # A reset's error is consumed as aiosmtpd's own clean-up would (no "exception never retrieved").
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
