"""The read / process / write pipeline behind `semseg predict` on videos: every item, in order,
whatever each stage's timing, and failures in any stage surface without leaving threads behind."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from semseg.inference.pipeline import run_pipeline


def jittered(fn, seed: int):
    """``fn`` after a random pause of 0-2 ms, so the three stages interleave differently each item."""
    rng = random.Random(seed)

    def slow(*args):
        time.sleep(rng.random() * 0.002)
        return fn(*args)

    return slow


@pytest.mark.parametrize("depth", [1, 4])
def test_every_item_arrives_once_and_in_order(depth):
    written = []
    read = jittered(lambda i: i, 0)
    count = run_pipeline((read(i) for i in range(300)), jittered(lambda i: i * 2, 1), jittered(written.append, 2),
                         depth=depth)  # fmt: skip
    assert count == 300 and written == [2 * i for i in range(300)]


@pytest.mark.parametrize("stage", ["source", "process", "sink"])
def test_a_failing_stage_stops_the_others_and_is_raised(stage):
    before = threading.active_count()
    written = []

    def source():
        for i in itertools.count():  # endless: only the failure can end the run
            if stage == "source" and i == 7:
                raise OSError("bad frame 7")
            yield i

    def process(i):
        if stage == "process" and i == 7:
            raise RuntimeError("bad frame 7")
        return i

    def sink(i):
        if stage == "sink" and i == 7:
            raise ValueError("bad frame 7")
        written.append(i)

    with pytest.raises((OSError, RuntimeError, ValueError), match="bad frame 7"):
        run_pipeline(source(), process, sink, depth=2)
    assert written == list(range(len(written))) and len(written) <= 7  # in order, nothing after the failure
    assert threading.active_count() == before  # reader and writer have ended
