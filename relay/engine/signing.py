"""DKIM-sign a message's copies together: digests on the loop, the private-key steps of all copies
in one round trip to the helper process (inline when there is none or it is down)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from relay.delivery.dkim import DkimKey, DkimSigner, SigningJob, SplitMessage
from relay.engine.helper import Helper, HelperJobFailed, HelperUnavailable
from relay.metrics import Metrics


class CopySigner:
    def __init__(
        self, signer: DkimSigner, metrics: Metrics | None = None, *, helper_now: Callable[[], Helper | None] = lambda: None
    ) -> None:
        self.signer = signer
        self.metrics = metrics
        # The helper to use now, if any (relay.engine.helper.Offload.helper_now): None for a lone
        # transaction and when [smtp] helper_process is off.
        self.helper_now = helper_now
        self._index = {id(key): i for i, key in enumerate(signer.keys)}
        self._counters: dict[str, Any] = {}

    @property
    def keys(self) -> tuple[DkimKey, ...]:
        """In the order the helper's setup lists them: jobs name keys by position."""
        return self.signer.keys

    async def sign(self, messages: Sequence[bytes | SplitMessage]) -> list[bytes]:
        """The messages signed; a SplitMessage (a copy whose fields its template knows) is not read again."""
        jobs = self.signer.prepare_all(messages)  # copies of one message: what they share, once
        work = [job for job in jobs if job is not None]
        if not work:
            return [m.message if isinstance(m, SplitMessage) else m for m in messages]
        signatures = await self._signatures(work)
        out, at = [], 0
        for message, job in zip(messages, jobs):
            if job is None:
                out.append(message.message if isinstance(message, SplitMessage) else message)
                continue
            n = len(job.digests)
            out.append(job.finish(signatures[at : at + n]))
            at += n
        return out

    async def _signatures(self, work: list[SigningJob]) -> list[bytes]:
        ran = "loop"
        helper = self.helper_now()
        if helper is not None:
            requests = [(self._index[id(k)], d) for job in work for k, d in zip(job.keys, job.digests)]
            try:
                signatures: list[bytes] = await helper.call("sign", requests)
                self._count("helper")
                return signatures
            except (HelperUnavailable, HelperJobFailed):
                ran = "fallback"  # the helper logged why; sign here
        self._count(ran)
        return [k.sign_digest(d) for job in work for k, d in zip(job.keys, job.digests)]

    def _count(self, ran: str) -> None:
        if self.metrics is not None:
            counter = self._counters.get(ran)
            if counter is None:  # labels() takes a lock and builds its key each time: once per kind
                counter = self._counters[ran] = self.metrics.helper_jobs.labels("sign", ran)
            counter.inc()
