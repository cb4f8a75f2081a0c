"""Run a batch producer one or two batches ahead of its consumer, in a background thread.

Feature extraction with JPEGs decoded on the GPU does the decoder's host stage (nvJPEG's Huffman
decoding) in the main process; run in series with the forward pass, the GPU waits for it and it
waits for the GPU. :func:`ahead` overlaps the two: the producer (decode, resize, copy) runs in a
thread, on its own CUDA stream when the device is a GPU, while the consumer runs the forward pass
of the batch before. torch's kernels and torchvision's decoders release the GIL, so the thread
runs truly alongside.

On a GPU each item's tensors are made safe for the consumer: its stream waits for the producer's
work on that batch, and the caching allocator is told the tensors are used on the consumer's
stream (``record_stream``), so their memory is not reused too early.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
_DONE = object()


def _tensors(item) -> Iterator[torch.Tensor]:
    if isinstance(item, torch.Tensor):
        yield item
    elif isinstance(item, (list, tuple)):
        for part in item:
            yield from _tensors(part)
    elif isinstance(item, dict):
        for part in item.values():
            yield from _tensors(part)


def ahead(items: Iterable[T], *, depth: int = 2, device: torch.device | None = None) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` more; exceptions arrive in order.

    Closing the returned generator early (``break``, an exception in the consumer) stops the producer
    after the item it is on.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    cuda = device is not None and device.type == "cuda"
    side = torch.cuda.Stream(device=device) if cuda else None
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
                for item in items:
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(side)
                    while not stop.is_set():
                        try:
                            q.put((item, event, None), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there in order
            q.put((None, None, err))
            return
        q.put((_DONE, None, None))

    thread = threading.Thread(target=produce, name="advisor-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, event, err = q.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            if event is not None:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(event)
                for t in _tensors(item):
                    if t.is_cuda:
                        t.record_stream(consumer)
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
