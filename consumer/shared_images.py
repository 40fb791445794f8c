"""Page images handed between processes through shared memory, not through pipes.

A page rendered at 150 dpi is some 6 MB. The batched pipeline renders it in a
render child and reads it in the device's child: through the executor's pipes
it would be pickled and copied twice, through the worker, for every page.
Here the render child writes it once into a named shared-memory block and
only the name travels; the device's child reads it in place.

One owner frees each block: the worker, once the batch that holds it is read
(:func:`free`). Python's resource tracker would otherwise count a block made in
one process and freed in another as leaked, and unlink it when the first of
them exits, so each process tells the tracker to forget the blocks it only
uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SharedImage:
    """Where an image lies in shared memory: small enough to pickle for nothing."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def _forget(block: shared_memory.SharedMemory) -> None:
    # The tracker registers a block on every open (before Python 3.13), as if this process owned it.
    resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]


def share(image: npt.NDArray[np.uint8]) -> SharedImage:
    """Copy ``image`` into a new shared-memory block; the caller hands the block on and never frees it."""
    block = shared_memory.SharedMemory(create=True, size=max(1, image.nbytes))
    try:
        np.ndarray(image.shape, dtype=image.dtype, buffer=block.buf)[...] = image
        _forget(block)
        return SharedImage(block.name, tuple(image.shape), str(image.dtype))
    finally:
        block.close()


@contextlib.contextmanager
def opened(images: Sequence[SharedImage]) -> Iterator[list[npt.NDArray[np.uint8]]]:
    """The images as arrays over their shared memory, for the block's duration; nothing is copied or freed."""
    blocks = []
    try:
        arrays = []
        for image in images:
            block = shared_memory.SharedMemory(name=image.name)
            _forget(block)
            blocks.append(block)
            arrays.append(np.ndarray(image.shape, dtype=np.dtype(image.dtype), buffer=block.buf))
        yield arrays
        del arrays
    finally:
        for block in blocks:
            block.close()


def free(images: Sequence[SharedImage]) -> None:
    """Unlink the images' blocks; one already gone is skipped."""
    for image in images:
        try:
            block = shared_memory.SharedMemory(name=image.name)
        except FileNotFoundError:
            continue
        _forget(block)
        block.close()
        with contextlib.suppress(FileNotFoundError):
            block.unlink()
