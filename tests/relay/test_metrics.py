"""relay.metrics: a label set's child is found without prometheus_client's checks once it exists,
and everything else (new sets, keywords, wrong counts, removed children) behaves as before."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from relay.metrics import Metrics


def test_a_known_label_set_is_the_same_child() -> None:
    m = Metrics()
    child = m.messages.labels("shop", "news", "delivered")
    child.inc()
    assert m.messages.labels("shop", "news", "delivered") is child
    assert m.messages.labels(account="shop", stream="news", outcome="delivered") is child
    m.messages.labels("shop", "news", "delivered").inc(2)
    assert b'consent_relay_messages_total{account="shop",outcome="delivered",stream="news"} 3.0' in generate_latest(m.registry)


def test_values_that_are_not_strs_are_turned_into_strs_as_before() -> None:
    m = Metrics()
    m.rule_hits.labels("rule", "reject").inc()
    assert m.rule_hits.labels(1, "reject") is m.rule_hits.labels("1", "reject")
    assert m.rule_hits.labels(["x"], "reject") is m.rule_hits.labels("['x']", "reject")


def test_wrong_labels_still_raise() -> None:
    m = Metrics()
    m.messages.labels("a", "b", "c")
    with pytest.raises(ValueError, match="Incorrect label count"):
        m.messages.labels("a", "b")
    with pytest.raises(ValueError, match="No label names"):
        m.auth_failures.labels("a")
    with pytest.raises(ValueError, match="Incorrect label names"):
        m.messages.labels(account="a", stream="b", result="c")


def test_a_removed_child_is_made_again() -> None:
    m = Metrics()
    child = m.recipients.labels("a", "b", "c")
    m.recipients.remove("a", "b", "c")
    again = m.recipients.labels("a", "b", "c")
    assert again is not child and again is m.recipients.labels("a", "b", "c")


_MULTIPROCESS_SCRIPT = r"""
import json, os, sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from relay.metrics import Metrics

def scrape():
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value for m in registry.collect() for s in m.samples}

m = Metrics()
child = m.messages.labels("shop", "news", "delivered")
assert child._add != child._value.inc  # the direct way, not the library's
for _ in range(3):
    child.inc()
child.inc(2.5)
m.recipients.labels("shop", "news", "delivered").inc(0)
m.auth_failures.inc()
for amount in (0.00005, 0.0001, 0.0003, 0.5, 7.0, 0.0004):
    m.policy_seconds.observe(amount)
m.smtp_connections.inc()
m.smtp_connections.inc(3)
m.smtp_connections.dec()
m.quarantine_messages.set(4)
m.account_state.labels("shop", "active").set(1)  # mostrecent: set() only
try:
    m.account_state.labels("shop", "active").inc()
except RuntimeError:
    pass
else:
    raise AssertionError("inc of a mostrecent gauge")
try:
    child.inc(-1)
except ValueError:
    pass
else:
    raise AssertionError("a counter went down")
try:
    m.messages.inc()
except ValueError:
    pass
else:
    raise AssertionError("a labelled metric's parent counted")
m.policy_seconds.observe(float("nan"))  # the library's way: the sum only
parent = scrape()
pid = os.fork()
if pid == 0:  # a forked child's values go to files of its own, through the library's inc
    child.inc(10)
    m.policy_seconds.observe(0.0002)
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({"parent": parent, "both": scrape(), "files": sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))}))
"""


def test_values_written_directly_in_multiprocess_mode_are_what_a_scrape_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 20: with [smtp] workers > 1 an inc or observe writes its value's slot of the process's
    file itself (not prometheus_client's inc with its lock, getpid and key lookup): a scrape, which
    adds up every process's files, reads exactly what was counted; a forked child counts into files
    of its own."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS_SCRIPT], cwd=repo, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=str(repo)),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    parent, both = result["parent"], result["both"]
    delivered = 'consent_relay_messages_total{"account": "shop", "outcome": "delivered", "stream": "news"}'
    assert parent[delivered] == 5.5 and both[delivered] == 15.5
    assert parent['consent_relay_recipients_total{"account": "shop", "outcome": "delivered", "stream": "news"}'] == 0
    assert parent["consent_relay_auth_failures_total{}"] == 1
    buckets = {k: v for k, v in parent.items() if k.startswith("consent_relay_policy_seconds_bucket")}
    le = {json.loads(k[len("consent_relay_policy_seconds_bucket"):])["le"]: v for k, v in buckets.items()}
    assert (le["0.0001"], le["0.00025"], le["0.0005"], le["0.1"], le["0.5"], le["+Inf"]) == (2, 2, 4, 4, 5, 6)
    assert parent["consent_relay_policy_seconds_count{}"] == 6
    assert parent["consent_relay_policy_seconds_sum{}"] != parent["consent_relay_policy_seconds_sum{}"]  # NaN, as the library adds it
    assert both['consent_relay_policy_seconds_bucket{"le": "0.00025"}'] == 3
    assert parent["consent_relay_smtp_connections{}"] == 3
    assert parent["consent_relay_quarantine_messages{}"] == 4
    assert len([f for f in result["files"] if f.startswith("counter_")]) == 2  # the parent's and the child's
