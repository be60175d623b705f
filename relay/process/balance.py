"""Sessions spread over `[smtp] workers`: every worker says on a shared board how many SMTP sessions
it holds, and a worker that holds more than another lets that one accept the next connection.

Workers inherit one listening socket (relay.process.listeners). The kernel wakes every worker on a
new connection and the first to call accept() gets it; uvloop then accepts whatever else is
queued in the same turn. A burst of connections could land 7 to 3 on two workers, and with
sessions that carry much work (a campaign of 1,000 recipients a message over ten connections) one
core finished its share while the other still had twice as much: `bench.scaling` measured
copies/s falling from 100 to 1,000 recipients a message for that reason alone.

Here a worker accepts one connection per turn, and only when no other worker holds clearly fewer
sessions (under SHARE of its own); otherwise it looks again after RECHECK_SECONDS, and accepts
anyway after MAX_YIELD_SECONDS (the less busy worker may be stuck in a long computation, or being
replaced), so no connection waits longer than that for a worker. nginx's accept_mutex (with its accept_mutex_delay) solves the same
problem; this is the smallest form of it for processes that share one accept queue.

The board is a memfd (an unlinked temporary file where there is none) the supervisor creates and
every worker maps: one signed 64-bit count per worker, written only by its worker, read by all.
A count read while another worker writes it is at most one session stale, which only costs a
connection the wait above.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import mmap
import os
import select
import socket
import ssl
import tempfile
from typing import Any, Callable, Coroutine

from relay.log import get_logger

SHARE = 0.85
RECHECK_SECONDS = 0.001
MAX_YIELD_SECONDS = 0.01
# asyncio's own pause after accept() fails for want of file descriptors (constants.ACCEPT_RETRY_DELAY)
_ACCEPT_RETRY_SECONDS = 1.0
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_SLOT = 8


class LoadBoard:
    """One session count per worker, shared through a file the workers inherit."""

    def __init__(self, fd: int, workers: int) -> None:
        self.fd = fd
        self.workers = workers
        self._map = mmap.mmap(fd, _SLOT * workers)
        self._counts = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, workers: int) -> LoadBoard:
        """The supervisor's board, every count 0; its fd is passed to each worker."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("consent-relay-sessions")
        else:  # pragma: no cover - not Linux
            handle = tempfile.TemporaryFile()
            fd = os.dup(handle.fileno())
            handle.close()
        os.ftruncate(fd, _SLOT * workers)
        return cls(fd, workers)

    @classmethod
    def inherited(cls, fd: int) -> LoadBoard:
        """A worker's view of its parent's board."""
        return cls(fd, os.fstat(fd).st_size // _SLOT)

    def set(self, index: int, sessions: int) -> None:
        if not self._map.closed:  # a session ending after the board was closed says nothing
            self._counts[index] = sessions

    def get(self, index: int) -> int:
        return int(self._counts[index])

    def fewer_elsewhere(self, index: int, sessions: int) -> bool:
        """Whether a worker other than `index` holds clearly fewer than `sessions`: under SHARE of
        them. With few sessions each one counts (1 against 0, 5 against 4); with many, as when every
        worker is busy, a difference of a session or two is not worth a connection's wait (25
        against 22 is not, 25 against 21 is)."""
        bound = sessions * SHARE
        return any(count < bound for i, count in enumerate(self._counts) if i != index)

    def close(self) -> None:
        if not self._map.closed:
            self._counts.release()
            self._map.close()
            os.close(self.fd)


class Balance:
    """This worker's place on the board: its index and the sessions it holds, accepted ones
    included until their protocol has started."""

    def __init__(self, board: LoadBoard, index: int, sessions: Callable[[], int]) -> None:
        self.board = board
        self.index = index
        self._sessions = sessions
        self.connecting = 0
        board.set(index, 0)

    def load(self) -> int:
        return self._sessions() + self.connecting

    def publish(self) -> None:
        self.board.set(self.index, self.load())

    def should_wait(self) -> bool:
        return self.board.fewer_elsewhere(self.index, self.load())


class BalancedServer:
    """An accept loop on an inherited listening socket in place of `loop.create_server`, closed and
    waited for the same way (Relay.stop)."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        balance: Balance,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = factory
        self._balance = balance
        self._ssl = ssl_context
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading = False
        self._closed = False
        self._connecting: set[asyncio.Task[Any]] = set()
        self._pending = select.poll()  # whether a connection is still queued, after a wait
        self._pending.register(self._fd, select.POLLIN)
        self._resume()

    def _resume(self) -> None:
        self._timer = None
        if self._waiting_since is not None and not self._pending.poll(0):
            self._waiting_since = None  # another worker took what we waited over: the next wait starts afresh
        if not self._closed and not self._reading:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _pause(self, seconds: float) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._timer = self._loop.call_later(seconds, self._resume)

    def _readable(self) -> None:
        if self._balance.should_wait():
            now = self._loop.time()
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < MAX_YIELD_SECONDS:
                self._pause(RECHECK_SECONDS)
                return
        self._waiting_since = None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up before we got to it
        except OSError as exc:
            if exc.errno in _OUT_OF_FILES:
                get_logger().error("smtp_accept_failed", error=str(exc), retry_in=_ACCEPT_RETRY_SECONDS)
                self._pause(_ACCEPT_RETRY_SECONDS)
                return
            raise
        # (non-blocking: libuv's uv_tcp_open makes the descriptor so, as its own accept does)
        if self._ssl is None:
            self._open(self._loop.connect_accepted_socket(self._factory, conn), conn)
            return
        # counted from now: its session starts (and counts itself) only after the handshake
        self._balance.connecting += 1
        self._balance.publish()
        task = self._loop.create_task(self._start_tls(conn))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _open(self, opening: Coroutine[Any, Any, Any], conn: socket.socket, _: object = None) -> None:
        """A plain connection's `connect_accepted_socket`, run here up to its one wait (for the
        protocol's connection_made) and resumed when that is done, rather than in a Task: a Task
        would start it a turn later, one more epoll_wait per connection (strace: 3.0 against 2.0
        per connection; uvloop's own server makes 2.0)."""
        try:
            waiting = opening.send(None)
        except StopIteration:
            return
        except Exception as exc:
            conn.close()  # gone before it started (an OSError), or a fault of ours: said below
            if not isinstance(exc, OSError):
                get_logger().error("smtp_accept_failed", error=repr(exc))
            return
        if waiting is None:  # a bare yield: go on next turn
            self._loop.call_soon(self._open, opening, conn)
        else:
            waiting.add_done_callback(functools.partial(self._open, opening, conn))

    async def _start_tls(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            conn.close()  # gone before it started, or no TLS handshake: nothing to say to it
        finally:
            self._balance.connecting -= 1
            self._balance.publish()

    def close(self) -> None:
        """Stop accepting; the sockets stay open for the other workers (and are closed with the
        process's listeners)."""
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_closed(self) -> None:
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)
