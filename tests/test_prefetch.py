"""advisor.core.prefetch.ahead: order kept, errors in order, the producer really runs ahead, early exit stops it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from advisor.core.prefetch import ahead


def test_items_arrive_in_order_with_their_tensors():
    items = [(i, torch.full((2,), float(i))) for i in range(20)]
    got = list(ahead(iter(items), depth=3, device=torch.device("cpu")))
    assert [i for i, _ in got] == list(range(20))
    assert all(torch.equal(t, torch.full((2,), float(i))) for i, t in got)


def test_an_error_arrives_after_the_items_before_it():
    def produce():
        yield 1
        yield 2
        raise ValueError("bad batch")

    seen = []
    with pytest.raises(ValueError, match="bad batch"):
        for x in ahead(produce(), depth=2):
            seen.append(x)
    assert seen == [1, 2]


def test_the_producer_makes_the_next_item_while_the_consumer_holds_this_one():
    second_made = threading.Event()

    def produce():
        yield 0
        second_made.set()  # only reached before the consumer asks for item 1 if a thread runs ahead
        yield 1

    it = ahead(produce(), depth=2)
    assert next(it) == 0
    assert second_made.wait(timeout=30)  # in series this would never be set before the next request
    assert list(it) == [1]


def test_closing_early_stops_the_producer():
    produced = []

    def produce():
        for i in range(1000):
            produced.append(i)
            yield i

    it = ahead(produce(), depth=2)
    assert next(it) == 0
    it.close()
    time.sleep(0.3)
    assert len(produced) <= 5
    assert not any(t.name == "advisor-prefetch" and t.is_alive() for t in threading.enumerate())


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        list(ahead([1], depth=0))
