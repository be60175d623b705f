"""Thread CPU of Engine.message in the relay's own workers, under `python -m bench` (issue 20,
session 17): what the content rules cost where they run, with the caches as the rest of the relay
leaves them, which in-process loops (bench_content_share) do not reproduce.

    ENGINE_PROBE=/tmp/probe PYTHONPATH=$PWD/bench/engine_probe .venv/bin/python -m bench \\
        --targets relay,relay-nocontent --messages 2000 --concurrency 10 --recipients 1
    .venv/bin/python -m bench.engine_probe /tmp/probe

Python imports this module at start-up in every process with bench/engine_probe on its path (an
absolute one: the relay runs in its own directory); it does
something only in a `serve` process with ENGINE_PROBE set (the directory for its figures): each
worker appends, every 500 end-of-DATA verdicts, the median and mean µs of thread CPU of those 500 to
ENGINE_PROBE/<target>-<pid>.txt. With ENGINE_PROBE_RULES=1 also each content rule's own median.
Measurement only: never on a production relay.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("ENGINE_PROBE") and "serve" in sys.argv[1:] + [a for a in sys.argv if a.endswith("serve")]:
    import collections
    import statistics
    import time

    def _install(directory: str) -> None:
        from policies import engine
        from policies.registry import ALL_RULES

        target = next((a for a in sys.argv if a.endswith("relay.toml")), "?/?").split("/")[-2]
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{target}-{os.getpid()}.txt")
        verdicts: list[int] = []
        rules: dict[str, list[int]] = collections.defaultdict(list)
        original = engine.Engine.message

        def message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.thread_time_ns()
            try:
                return original(self, *args, **kwargs)
            finally:
                verdicts.append(time.thread_time_ns() - start)
                if len(verdicts) % 500 == 0:
                    last = verdicts[-500:]
                    line = f"{len(verdicts)} {statistics.median(last) / 1000:.1f} {statistics.mean(last) / 1000:.1f}"
                    line += "".join(f" {k}={statistics.median(v[-500:]) / 1000:.1f}" for k, v in rules.items())
                    with open(path, "a") as out:
                        out.write(line + "\n")

        engine.Engine.message = message  # type: ignore[method-assign]
        if os.environ.get("ENGINE_PROBE_RULES"):
            for rule in ALL_RULES:
                if rule.id.startswith("content."):
                    def check(*args, _check=rule.check, _id=rule.id.partition(".")[2]):  # type: ignore[no-untyped-def]
                        start = time.thread_time_ns()
                        try:
                            return _check(*args)
                        finally:
                            rules[_id].append(time.thread_time_ns() - start)

                    object.__setattr__(rule, "check", check)

    _install(os.environ["ENGINE_PROBE"])
