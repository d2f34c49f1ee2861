"""Delta commits that lose a race with another writer: retried a bounded number of times.

Delta checks each commit against the ones that landed since its snapshot and refuses it when
they touched the same data (``ConcurrentAppendException`` and its siblings). Nothing of the
refused commit is visible, so running the whole operation again, on a fresh snapshot, is safe.
"""
import logging
import random
import time

from mlops.errors import DataError

logger = logging.getLogger(__name__)

ATTEMPTS = 6
FIRST_PAUSE_SECONDS = 0.5
# Delta's conflict exceptions, by class name and by error condition.
CONFLICT_NAMES = ("ConcurrentAppendException", "ConcurrentDeleteReadException",
                  "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
                  "ConcurrentWriteException",
                  "MetadataChangedException", "ProtocolChangedException", "DELTA_CONCURRENT_",
                  "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED")
# Two first writers: the one that finds the table created by the other merges into it instead.
CREATE_RACE_NAMES = ("TABLE_OR_VIEW_ALREADY_EXISTS", "DELTA_TABLE_ALREADY_EXISTS",
                     "TableAlreadyExistsException")


def conflict_name(error: BaseException):
    """The Delta conflict ``error`` reports, or None when it is no conflict."""
    text = f"{type(error).__name__} {error}"
    return next((name for name in CONFLICT_NAMES + CREATE_RACE_NAMES if name in text), None)


def committed(operation, table: str, attempts: int = ATTEMPTS):
    """``operation()``, run again while Delta refuses its commit for a concurrent one.

    After ``attempts`` refusals a DataError names ``table`` and the conflict.
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as error:
            name = conflict_name(error)
            if name is None:
                raise
            if attempt == attempts:
                raise DataError(f"table {table} kept changing under this write: {attempts} attempts each "
                                f"lost to a concurrent commit ({name.rstrip('_')}); run it again") from None
            pause = FIRST_PAUSE_SECONDS * 2 ** (attempt - 1) * (0.5 + random.random())
            logger.warning("table %s: commit refused (%s), attempt %d of %d, retrying in %.1f s",
                           table, name.rstrip("_"), attempt, attempts, pause)
            time.sleep(pause)
