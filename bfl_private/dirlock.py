"""One writer per federation directory: an advisory lock on the directory itself.

``flock`` on the directory's own descriptor leaves no lock file behind (the evidence
directory holds only what the federation wrote), is released by the kernel when the
process dies however it dies, and needs no stale-lock recovery.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .primitives.errors import BflError


class DirectoryBusy(BflError, RuntimeError):
    """Another process holds the federation directory's writer lock."""


@contextmanager
def exclusive_writer(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s writer lock for the block, or raise DirectoryBusy at once."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusy(f"{directory} is being written by another bfl-private command; "
                                f"run again when it has finished") from None
        yield
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock
