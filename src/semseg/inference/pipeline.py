"""Three stages overlapped in threads: read, process, write, with every item kept and in order.

Video segmentation spends its time in three places that each release the GIL for most of
their work: decoding a frame (OpenCV), the forward pass (torch, ONNX Runtime, OpenVINO) and
drawing plus encoding the overlay (NumPy, OpenCV). Run one after another, a frame costs their
sum; overlapped, it costs about the slowest of the three. One reader thread and one writer
thread joined by bounded FIFO queues keep the frames in order and bound the memory to
``2 * depth`` frames in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

A = TypeVar("A")
B = TypeVar("B")
_END = object()  # closes a queue: no more items


def run_pipeline(source: Iterator[A], process: Callable[[A], B], sink: Callable[[B], None], *, depth: int = 4) -> int:
    """Feed every item of ``source`` (iterated in a reader thread) through ``process`` (in the calling
    thread) to ``sink`` (in a writer thread), in order; returns the number of items.

    The first exception in any stage stops the other two and is raised here, once all three
    have stopped, so nothing is left running or half-written behind the caller's back.
    """
    inbox: queue.Queue[Any] = queue.Queue(depth)
    outbox: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    errors: list[BaseException] = []

    def put(box: queue.Queue[Any], item: Any) -> bool:
        """Put ``item`` unless the pipeline stopped; waits in short steps so a stop is never missed."""
        while not stop.is_set():
            try:
                box.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in source:
                if not put(inbox, item):
                    return
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller, not swallowed
            errors.append(exc)
            stop.set()
        put(inbox, _END)

    def write() -> None:
        while True:
            try:
                item = outbox.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():  # another stage failed: what is still queued is not needed
                    return
                continue
            if item is _END:
                return
            try:
                sink(item)
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller, not swallowed
                errors.append(exc)
                stop.set()
                return

    reader, writer = threading.Thread(target=read, daemon=True), threading.Thread(target=write, daemon=True)
    reader.start()
    writer.start()
    count = 0
    try:
        while not stop.is_set():
            try:
                item = inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                break
            if not put(outbox, process(item)):
                break
            count += 1
    except BaseException as exc:
        errors.append(exc)
        stop.set()
    finally:
        put(outbox, _END)  # after the last item; returns at once if a stage failed
        writer.join()
        stop.set()  # the reader may be waiting on a full inbox
        reader.join()
    if errors:
        raise errors[0]
    return count
