"""relay.engine.retry_memory: what a failed attempt delivered, kept for its retry, bounded in size and time."""

from __future__ import annotations

from relay.engine.retry_memory import RetryMemory


def test_a_retry_of_the_same_bytes_is_recognised_and_nothing_else_is() -> None:
    memory = RetryMemory()
    memory.remember("shop", "a@shop.example", b"message", ["anna@example.nl"])
    memory.remember("shop", "a@shop.example", b"message", ["bob@example.nl"])
    assert memory.delivered("shop", "a@shop.example", b"message") == {"anna@example.nl", "bob@example.nl"}
    assert not memory.delivered("shop", "a@shop.example", b"message, edited")
    assert not memory.delivered("other", "a@shop.example", b"message")
    assert not memory.delivered("shop", "b@shop.example", b"message")
    memory.forget("shop", "a@shop.example", b"message")
    assert not memory.delivered("shop", "a@shop.example", b"message") and len(memory) == 0


def test_entries_end_with_their_window_and_the_oldest_go_first() -> None:
    now = [0.0]
    memory = RetryMemory(window=100, max_entries=3, clock=lambda: now[0])
    for n in range(5):
        memory.remember("shop", "", f"message {n}".encode(), ["anna@example.nl"])
    assert len(memory) == 3
    assert not memory.delivered("shop", "", b"message 1") and memory.delivered("shop", "", b"message 4")
    now[0] = 100.0
    assert not memory.delivered("shop", "", b"message 4")
