"""SIGTERM as an interruption: a timeout or a CI cancellation stops a local run as Ctrl-C does.

``timeout`` and CI cancellations signal a whole process group, so Spark's JVM gets SIGTERM too
and a stage can fail with a Py4J error before Python runs its handler. :func:`interrupted_by`
says whether a signal arrived, so that such a failure is reported as the interruption it is.
"""
import contextlib
import signal
import threading

_received: list[str] = []


def interrupted_by() -> str:
    """The name of the signal that interrupted the current block ('' when none did)."""
    return _received[-1] if _received else ""


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM raises KeyboardInterrupt('interrupted by SIGTERM') in the main thread."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        name = signal.Signals(signum).name
        _received.append(name)
        raise KeyboardInterrupt(f"interrupted by {name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
