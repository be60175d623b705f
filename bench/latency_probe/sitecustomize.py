"""Per-phase timestamps of every message through the relay's workers, under `python -m bench`
(issue 20, session 18): where one message's latency goes at concurrency 1, with and without the
content rules.

    LATENCY_PROBE=/tmp/lp PYTHONPATH=$PWD/bench/latency_probe .venv/bin/python -m bench \\
        --targets relay,relay-nocontent --messages 2000 --concurrency 1 --recipients 1
    .venv/bin/python -m bench.latency_probe /tmp/lp

Python imports this module at start-up in every process with bench/latency_probe on its path; it
does something only in a relay worker (`serve … --worker-index`) with LATENCY_PROBE set: each
session gets a row of CLOCK_MONOTONIC and thread-CPU nanoseconds at its marks (connection made,
DATA body in, parse, verdict, upstream send, reply, connection lost) and the garbage collections
that ran during it, appended to LATENCY_PROBE/<target>-<pid>.txt. Measurement only.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("LATENCY_PROBE") and "serve" in sys.argv and "--worker-index" in sys.argv:
    import gc
    import resource
    import time

    MARKS = ("made", "data", "parsed", "eval0", "eval1", "send0", "send1", "replied", "lost")

    def _install(directory: str) -> None:
        from relay.engine import pipeline
        from relay.delivery import upstream
        from relay.smtp import handler, server

        target = sys.argv[sys.argv.index("-c") + 1].split("/")[-3]  # "1-relay": the bench's row directory
        os.makedirs(directory, exist_ok=True)
        rows: list[str] = []
        state: dict[str, object] = {"row": None, "gc": [0, 0, 0], "gc_ns": 0, "gc_start": 0, "faults": 0}
        wall, cpu = time.perf_counter_ns, time.thread_time_ns

        def mark(name: str) -> None:
            row = state["row"]
            if isinstance(row, dict) and name not in row:
                row[name] = (wall(), cpu())

        def flush() -> None:
            with open(os.path.join(directory, f"{target}-{os.getpid()}.txt"), "a") as out:
                out.write("".join(rows))
            rows.clear()

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                state["gc_start"] = wall()
            else:
                counts = state["gc"]
                assert isinstance(counts, list)
                counts[info["generation"]] += 1
                state["gc_ns"] = int(state["gc_ns"]) + wall() - int(state["gc_start"])  # type: ignore[call-overload]

        gc.callbacks.append(on_gc)

        made, lost = server.RelaySMTP.connection_made, server.RelaySMTP.connection_lost

        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            if self._admitted_ip is None and self.transport is None:
                state["row"] = {}
                state["gc"], state["gc_ns"] = [0, 0, 0], 0
                mark("made")
                state["faults"] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            return made(self, transport)

        def connection_lost(self, error):  # type: ignore[no-untyped-def]
            mark("lost")
            row = state["row"]
            if isinstance(row, dict) and "replied" in row:
                counts = state["gc"]
                assert isinstance(counts, list)
                rows.append(
                    " ".join(f"{m}={row[m][0]},{row[m][1]}" for m in MARKS if m in row)
                    + f" pcpu={time.process_time_ns()}"
                    + f" faults={resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - int(state['faults'])}"  # type: ignore[call-overload]
                    + f" gc={counts[0]},{counts[1]},{counts[2]} gc_ns={state['gc_ns']}\n"
                )
                if len(rows) >= 200:
                    flush()
            state["row"] = None
            return lost(self, error)

        server.RelaySMTP.connection_made = connection_made  # type: ignore[method-assign]
        server.RelaySMTP.connection_lost = connection_lost  # type: ignore[method-assign]

        handle_data = handler.RelayHandler.handle_DATA

        async def handle_DATA(self, server_, session, envelope):  # type: ignore[no-untyped-def]
            mark("data")
            try:
                return await handle_data(self, server_, session, envelope)
            finally:
                mark("replied")

        handler.RelayHandler.handle_DATA = handle_DATA  # type: ignore[method-assign]

        parse = pipeline.parse_message

        def parse_message(raw):  # type: ignore[no-untyped-def]
            try:
                return parse(raw)
            finally:
                mark("parsed")

        pipeline.parse_message = parse_message

        evaluate = pipeline.Pipeline.evaluate

        async def evaluate_(self, facts, rfacts):  # type: ignore[no-untyped-def]
            mark("eval0")
            try:
                return await evaluate(self, facts, rfacts)
            finally:
                mark("eval1")

        pipeline.Pipeline.evaluate = evaluate_  # type: ignore[method-assign]

        send = upstream.Upstream.send

        async def send_(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            mark("send0")
            try:
                return await send(self, *args, **kwargs)
            finally:
                mark("send1")

        upstream.Upstream.send = send_  # type: ignore[method-assign]

        import atexit

        atexit.register(flush)

    _install(os.environ["LATENCY_PROBE"])
