"""Named locks that several local processes share, as files under ``$MLOPS_HOME/locks``.

``filelock`` takes an OS lock on the file (``flock`` on POSIX, ``msvcrt`` on Windows), which
the kernel releases when the process ends, so a killed process never leaves a lock behind.
"""
import contextlib
import re
from pathlib import Path
from typing import Iterator, Optional

import filelock

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def lock_path(folder: Path, name: str) -> Path:
    return folder / f"{_UNSAFE.sub('_', name)}.lock"


@contextlib.contextmanager
def file_lock(path: Path, wait_seconds: Optional[float] = None, poll_seconds: float = 0.2) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields False without holding it when the wait ran out.

    ``wait_seconds`` None waits as long as it takes; 0 tries once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, timeout=-1 if wait_seconds is None else wait_seconds,
                             poll_interval=poll_seconds, preserve_lock_file=True)
    try:
        lock.acquire()
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
