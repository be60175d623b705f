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
