"""Cost as work grows (issue 20): the marketing message to 1, 10, 100 and 1,000 recipients per
message, consent imported for every one, through consent-relay's default config (`workers =
"auto"`), and per row the copies per second and the relay's peak RSS per process.

    .venv/bin/python -m bench.scaling                         # 1,10,100,1000 recipients, 10,000 copies a row
    .venv/bin/python -m bench.scaling --copies 2000 --recipients 1,1000 --target relay-dkim
    .venv/bin/python -m bench.scaling --baselines direct,postfix     # the same cuts with nothing / Postfix between

The goal: copies/s flat (±15 %) from 1 to 1,000 recipients, and memory bounded by the message's
size, not by its recipients. Each row sends the same number of copies (`--copies`), as
`--copies / recipients` messages (at least `--concurrency`) over `--concurrency` smtp-source
sessions, so the rows differ in how the work is cut, not in how much there is. The load, sink and
accounting are bench/throughput.py's.

`--baselines` runs the same rows, interleaved with the relay's, through other targets of
bench/throughput.py: `direct` (smtp-source straight into smtp-sink, nothing between) and `postfix`
(a private Postfix with its queue). They make no personalised copies (one transaction carries all of
a message's recipients), so they are not the relay's equals; they show how far the client and the
sink alone bend the curve.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.throughput import (
    MESSAGE,
    OUT_DIR,
    Load,
    Options,
    Relay,
    Result,
    Sink,
    Target,
    _make_target,
    _rmtree,
    _terminate_on_signals,
    check_tools,
    load_average,
    machine,
    measure,
    wait_quiet,
)

FLAT = 0.15  # the goal: every row's copies/s within ±15 % of the 1-recipient row
BASELINES = ("direct", "postfix", "forwarder")


@dataclass
class Row:
    result: Result
    workers: int  # the relay's worker processes during the row (0 for a baseline)

    @property
    def copies_per_s(self) -> float:
        r = self.result
        return r.recipients / r.seconds if r.complete and r.seconds > 0 else 0.0


def run(
    target_name: str,
    recipients: Sequence[int],
    copies: int,
    concurrency: int,
    warmup: int,
    keep: bool,
    reuse: bool = False,
    baselines: Sequence[str] = (),
) -> tuple[list[Row], dict[str, list[Row]]]:
    """The relay's rows, and each baseline's rows measured just before the relay's of the same cut."""
    check_tools()
    rows: list[Row] = []
    others: dict[str, list[Row]] = {name: [] for name in baselines}
    with _terminate_on_signals(), ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="consent-relay-scaling-"))
        os.chmod(workdir, 0o755)  # Postfix daemons run as the postfix user and must reach their dirs
        if keep:
            print(f"# keeping {workdir}", file=sys.stderr, flush=True)
        else:
            stack.callback(_rmtree, workdir)
        sink = Sink(Path(tempfile.mkdtemp(prefix="consent-relay-scaling-sink-", dir="/dev/shm")), stack)
        stack.callback(_rmtree, sink.dir)
        options = Options(rcpts=tuple(recipients), consent=True)
        target = _make_target(target_name, sink, stack, workdir, options)
        assert isinstance(target, Relay)
        references = {name: _make_target(name, sink, stack, _subdir(workdir, name), options) for name in baselines}
        for each in (*references.values(), target):
            if warmup:
                measure(each, sink, Load(warmup, concurrency, 1), stack, workdir)
                wait_quiet(sink)
        for r in recipients:
            load = Load(max(concurrency, copies // r), concurrency, r, reuse=reuse)
            for name, reference in references.items():
                others[name].append(_row(reference, sink, load, stack, workdir, 0))
            rows.append(_row(target, sink, load, stack, workdir, None))
    return rows, others


def _subdir(workdir: Path, name: str) -> Path:
    path = workdir / name
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    return path


def _row(target: Target, sink: Sink, load: Load, stack: ExitStack, workdir: Path, workers: int | None) -> Row:
    result = measure(target, sink, load, stack, workdir)
    row = Row(result, workers_logged(target) if workers is None and isinstance(target, Relay) else 0)
    print(_progress(row), file=sys.stderr, flush=True)
    if result.error:
        wait_quiet(sink, seconds=1.0)
    return row


def workers_logged(relay: Relay) -> int:
    """The worker count `serve` logged at start (`relay_workers`); 0 when it said nothing."""
    for line in (relay.home / "relay.err").read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "relay_workers":
            return int(event["workers"])
    return 0


def _progress(row: Row) -> str:
    r = row.result
    status = f"{row.copies_per_s:7.0f} copies/s" if r.complete else f"FAILED ({r.error})"
    return f"# {r.target} r={r.rcpts:<5} messages={r.messages:<6} {status}  max RSS/process {r.rss_process_mb or 0:.0f} MB"


def _ms_per(seconds: float | None, count: int) -> float | None:
    return seconds / count * 1000 if seconds is not None and count else None


def _cell(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "—"


def machine_ms_per_copy(r: Result) -> float | None:
    """CPU per copy of everything the row ran: the target's tree (none for `direct`, which has no
    process between smtp-source and smtp-sink), smtp-source and smtp-sink."""
    if r.client_cpu_s is None or r.sink_cpu_s is None or not r.recipients:
        return None
    return ((r.cpu_s or 0.0) + r.client_cpu_s + r.sink_cpu_s) / r.recipients * 1000


def table(rows: Sequence[Row]) -> str:
    base = rows[0].copies_per_s if rows and rows[0].result.rcpts == 1 else 0.0
    lines = [
        "| recipients / message | messages | copies | copies/s | vs 1 recipient | CPU s per 1,000 copies "
        "| peak RSS MB, largest process | peak RSS MB, whole relay "
        "| CPU ms per copy: relay | smtp-source | smtp-sink | all three |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r = row.result
        rate = f"{row.copies_per_s:.0f}" if r.complete else f"failed: {r.error}".replace("|", "/")
        ratio = f"{row.copies_per_s / base:.2f}×" if base and r.complete else "—"
        cpu = f"{r.cpu_s / r.recipients * 1000:.2f}" if r.cpu_s is not None and r.recipients else "—"
        one = f"{r.rss_process_mb:.0f}" if r.rss_process_mb is not None else "—"
        tree = f"{r.rss_mb:.0f}" if r.rss_mb is not None else "—"
        per_copy = [_ms_per(x, r.recipients) for x in (r.cpu_s, r.client_cpu_s, r.sink_cpu_s)]
        lines.append(
            f"| {r.rcpts} | {r.messages} | {r.recipients} | {rate} | {ratio} | {cpu} | {one} | {tree} "
            f"| {' | '.join(map(_cell, per_copy))} | {_cell(machine_ms_per_copy(r))} |"
        )
    return "\n".join(lines)


def floor(rows: Sequence[Row]) -> str:
    """The best the 1-recipient row could be if receiving a message cost the relay nothing.

    Such a relay would still spend, per copy, at least the least it spends per copy in any row
    (where receiving is shared by the most copies); smtp-sink would spend at least its least per
    copy in any row; smtp-source would spend what it spent per message in the 1-recipient row (it
    opens a connection per message unless --reuse). With the cores busy, copies/s goes as 1 / CPU per copy, so the
    1-recipient row can be at most the fastest row's CPU per copy over this sum of that row's."""
    done = [row for row in rows if row.result.complete]
    if len(done) < 2 or done[0].result.rcpts != 1:
        return ""
    client = _ms_per(done[0].result.client_cpu_s, done[0].result.recipients)
    relays = [_ms_per(row.result.cpu_s, row.result.recipients) for row in done]
    sinks = [_ms_per(row.result.sink_cpu_s, row.result.recipients) for row in done]
    fastest = max(done, key=lambda row: row.copies_per_s)
    fast_all = machine_ms_per_copy(fastest.result)
    if client is None or fast_all is None or None in relays or None in sinks:
        return ""
    relay, sink = min(r for r in relays if r is not None), min(s for s in sinks if s is not None)
    bound = client + sink + relay
    return (
        f"Floor: if receiving a message cost the relay nothing, a 1-recipient copy would still cost at least {bound:.3f} ms "
        f"of CPU (smtp-source {client:.3f} per message at 1 recipient, the least per copy of any row: smtp-sink {sink:.3f}, "
        f"the relay {relay:.3f}), against {fast_all:.3f} ms per copy for all three in the fastest row ({fastest.result.rcpts} "
        f"recipients): at best {fast_all / bound:.2f}× that row's copies/s, where the goal asks ≥ {1 / (1 + FLAT):.2f}×."
    )


def baseline_table(rows: Sequence[Row], others: dict[str, Sequence[Row]]) -> str:
    """copies/s per target and cut, each against its own 1-recipient row, and CPU per copy of
    everything each row ran (a target without a middle process counts smtp-source and smtp-sink)."""
    columns = {rows[0].result.target if rows else "relay": rows, **others}
    head = " | ".join(f"{name} copies/s | ÷ its 1 rcpt | CPU ms/copy, all" for name in columns)
    lines = [f"| recipients / message | {head} |", "|---:|" + "---:|---:|---:|" * len(columns)]
    for i, row in enumerate(rows):
        cells = []
        for series in columns.values():
            each = series[i] if i < len(series) else None
            if each is None or not each.result.complete:
                cells.append("— | — | —")
                continue
            first = series[0].copies_per_s if series[0].result.rcpts == 1 and series[0].result.complete else 0.0
            ratio = f"{each.copies_per_s / first:.2f}×" if first else "—"
            cells.append(f"{each.copies_per_s:.0f} | {ratio} | {_cell(machine_ms_per_copy(each.result))}")
        lines.append(f"| {row.result.rcpts} | {' | '.join(cells)} |")
    return "\n".join(lines)


def verdict(rows: Sequence[Row]) -> str:
    done = [row for row in rows if row.result.complete]
    if not done or done[0].result.rcpts != 1 or len(done) != len(rows):
        return "incomplete: no verdict"
    base = done[0].copies_per_s
    worst = max(done, key=lambda row: abs(row.copies_per_s / base - 1))
    flat = abs(worst.copies_per_s / base - 1) <= FLAT
    peaks = [row.result.rss_process_mb or 0 for row in done]
    # The weaker reading of the goal: more recipients a message never cost copies/s (no row more
    # than FLAT below the best row before it), whatever the 1-recipient row's own costs.
    best, fall = done[0].copies_per_s, ""
    for row in done[1:]:
        if row.copies_per_s < best * (1 - FLAT) and not fall:
            fall = f"FALLS at {row.result.rcpts} recipients ({row.copies_per_s:.0f} copies/s after {best:.0f})"
        best = max(best, row.copies_per_s)
    no_fall = fall or f"no fall: no row more than {FLAT:.0%} below a row with fewer recipients"
    return (
        f"copies/s {'flat' if flat else 'NOT flat'} within ±{FLAT:.0%} of the 1-recipient row "
        f"(furthest: {worst.result.rcpts} recipients at {worst.copies_per_s / base:.2f}×); {no_fall}; "
        f"largest process peak RSS {min(peaks):.0f}–{max(peaks):.0f} MB across the rows"
    )


def report(
    rows: Sequence[Row],
    command: str,
    target: str,
    concurrency: int,
    load_before: str,
    reuse: bool = False,
    others: dict[str, Sequence[Row]] | None = None,
) -> str:
    size = len(MESSAGE.read_bytes().replace(b"\n", b"\r\n"))
    workers = sorted({row.workers for row in rows})
    return "\n".join([
        "# Cost as work grows",
        "",
        f"Command: `{command}`",
        "",
        f"Target `{target}` ({', '.join(map(str, workers))} worker process(es)), marketing stream with consent for every "
        f"recipient; the {size}-byte bench/message.eml; {concurrency} smtp-source sessions, "
        f"{'each over one connection (-d)' if reuse else 'a new connection per message'}; "
        "smtp-sink as the upstream. copies/s = recipients at the sink / seconds from the start of smtp-source until the sink "
        "holds them all. CPU s = user+sys of the relay's process tree (smtp-source's and smtp-sink's in their own columns). Peak RSS = VmHWM, reset before each row: of the "
        "largest single process (a worker), and summed over the tree (supervisor, workers, helpers).",
        f"Machine: {machine()}; load average before: {load_before}, after: {load_average()}.",
        "",
        table(rows),
        "",
        verdict(rows),
        "",
        floor(rows),
        "",
        *(
            [
                f"The same cuts through {', '.join(others)}, each row measured just before the relay's (no personalised "
                "copies: a message's recipients go in one transaction):",
                "",
                baseline_table(rows, others),
                "",
            ]
            if others
            else []
        ),
    ])


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(x) for x in text.split(",") if x.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("need positive integers, e.g. 1,10,100,1000")
    return values


def _names(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return names


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=_ints, default=(1, 10, 100, 1000), help="recipients per message, one row each")
    parser.add_argument("--copies", type=int, default=10000, help="copies per row (default 10000)")
    parser.add_argument("--concurrency", type=int, default=10, help="smtp-source sessions (default 10)")
    parser.add_argument("--target", default="relay", help="a relay target of bench/throughput.py (default relay: the default config)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured 1-recipient messages first")
    parser.add_argument(
        "--reuse", action="store_true",
        help="smtp-source -d: each session sends its messages over one connection, as an application's MTA that caches "
        "its connection to the relay does (default: a new connection per message)",
    )
    parser.add_argument(
        "--baselines", type=_names, default=(),
        help="other bench/throughput.py targets run on the same cuts, interleaved: direct (nothing between), postfix",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "scaling.md")
    args = parser.parse_args(argv)
    if args.target != "relay" and not args.target.startswith(("relay1", "relay2", "relay-")):
        parser.error("--target must be a relay target")
    load_before = load_average()
    rows, others = run(
        args.target, args.recipients, args.copies, args.concurrency, args.warmup, args.keep, args.reuse, args.baselines
    )
    command = " ".join([".venv/bin/python -m bench.scaling", *(shlex.quote(a) for a in argv)])
    text = report(rows, command, args.target, args.concurrency, load_before, args.reuse, others)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 0 if all(row.result.complete for row in (*rows, *(r for each in others.values() for r in each))) else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
