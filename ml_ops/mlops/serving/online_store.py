"""The online feature store: the latest per-zip window values, as versioned snapshots on disk.

Feature engineering publishes, from the zip feature tables, each zip's latest window (the
values and the window's end) as one snapshot file ``snapshot-<version>.json``, written to a
temporary name and renamed, then points ``LATEST`` at it the same way: a reader sees the old
snapshot or the new one, never half of one. The server's :class:`OnlineFeatureStore` reads
``LATEST``, reloads when it names a newer version, and looks trips up by zip.

A lookup reads the window that ends at the trip's pickup floored to the 15-minute grid, as the
batch point-in-time join does, and gives the same values: the zip's window when it ends there,
else no trips and no mean fare (the zip had no trip in that window). A pickup after the
snapshot's ``as_of`` reads the snapshot's newest grid point, up to ``max_age``; beyond that,
and for a zip the snapshot does not know or a snapshot newer than the trip, the values fall
back to the documented defaults and the lookup says which did.
"""
import datetime
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import functions as F
from taxi_fares import features

from mlops.errors import DataError

logger = logging.getLogger(__name__)

LATEST = "LATEST"
GRID = datetime.timedelta(microseconds=features.GRID_MICROS)
# What a trip with no recent window gets: the batch join's values for a window without trips.
DEFAULTS = {features.MEAN_FARE_1H_PICKUP_ZIP: None, features.COUNT_1H_PICKUP_ZIP: 0,
            features.COUNT_30M_DROPOFF_ZIP: 0}
PICKUP_VALUES = (features.MEAN_FARE_1H_PICKUP_ZIP, features.COUNT_1H_PICKUP_ZIP)
DROPOFF_VALUES = (features.COUNT_30M_DROPOFF_ZIP,)


def floor_to_grid(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` floored to the 15-minute grid the feature windows end on (aligned on the epoch)."""
    epoch = datetime.datetime(1970, 1, 1)
    return moment - (moment - epoch) % GRID


def _latest_per_zip(frame, zip_column: str, values) -> dict:
    """{zip: {"window_end": iso, value...}}: each zip's newest window, one row per zip to the driver."""
    row = F.struct(features.FEATURE_TIMESTAMP, *values)
    newest = frame.groupBy(zip_column).agg(F.max_by(row, F.col(features.FEATURE_TIMESTAMP)).alias("row"))
    snapshot = {}
    for row in newest.collect():
        latest = row["row"].asDict()
        window_end = latest.pop(features.FEATURE_TIMESTAMP)
        snapshot[str(row[zip_column])] = {"window_end": window_end.isoformat(), **latest}
    return snapshot


def build_snapshot(pickup_features, dropoff_features, as_of: datetime.datetime | None = None) -> dict:
    """The snapshot's content from the two zip feature tables (Spark DataFrames).

    ``as_of`` keeps only windows ending at or before it (what a publish at that moment saw);
    the snapshot records the newest window end it holds as its own ``as_of``.
    """
    if as_of is not None:
        pickup_features = pickup_features.where(F.col(features.FEATURE_TIMESTAMP) <= F.lit(as_of))
        dropoff_features = dropoff_features.where(F.col(features.FEATURE_TIMESTAMP) <= F.lit(as_of))
    content = {"pickup_zip": _latest_per_zip(pickup_features, "pickup_zip", PICKUP_VALUES),
               "dropoff_zip": _latest_per_zip(dropoff_features, "dropoff_zip", DROPOFF_VALUES)}
    ends = [window["window_end"] for kind in content.values() for window in kind.values()]
    if not ends:
        raise DataError("the zip feature tables hold no window to publish to the online store; "
                        "run feature engineering on a range with trips first")
    return {**content, "as_of": max(ends)}


def _replace_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def publish(folder: Path, content: dict, source: str = "") -> int:
    """Write ``content`` as the next snapshot version and point LATEST at it; returns the version.

    A snapshot older than the one held (``as_of``) is not published; the held version is returned.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = read_latest_version(folder)
    if current is not None:
        held = json.loads((folder / f"snapshot-{current}.json").read_text(encoding="utf-8")).get("as_of", "")
        if content["as_of"] < held:
            # Rebuilding older feature tables (a retraining range) must not turn the online store back.
            logger.info("online feature snapshot %d (as of %s) kept: the new one is older (%s)", current,
                        held, content["as_of"])
            return current
    version = (current or 0) + 1
    published_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    body = {"version": version, "published_at": published_at, "source": source, **content}
    _replace_atomically(folder / f"snapshot-{version}.json", json.dumps(body, sort_keys=True))
    _replace_atomically(folder / LATEST, str(version))
    logger.info("online feature snapshot %d: %d pickup zips, %d dropoff zips in %s", version,
                len(content["pickup_zip"]), len(content["dropoff_zip"]), folder)
    return version


def read_latest_version(folder: Path) -> int | None:
    pointer = Path(folder) / LATEST
    try:
        return int(pointer.read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise DataError(f"the online store pointer {pointer} is not a version number: {error}") from None


@dataclass
class Lookup:
    """The looked-up window features of one trip, and which of them fell back to the defaults."""

    values: dict
    fell_back: list = field(default_factory=list)


class OnlineFeatureStore:
    """Reads the latest snapshot of ``folder`` and looks trips up in it; thread-safe."""

    def __init__(self, folder: Path, max_age: datetime.timedelta):
        self.folder = Path(folder)
        self.max_age = max_age
        self.version = None
        self._snapshot = {"pickup_zip": {}, "dropoff_zip": {}}
        self._lock = threading.Lock()
        self.fallbacks = 0

    def refresh(self) -> bool:
        """Load the snapshot LATEST names when it is newer than the one held; True when it loaded one."""
        latest = read_latest_version(self.folder)
        if latest is None or latest == self.version:
            return False
        path = self.folder / f"snapshot-{latest}.json"
        try:
            snapshot = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read the online feature snapshot {path}: {error}") from None
        with self._lock:
            self._snapshot, self.version = snapshot, latest
        logger.info("online feature snapshot %d loaded from %s", latest, self.folder)
        return True

    def lookup(self, pickup_zip, dropoff_zip, pickup: datetime.datetime) -> Lookup:
        """The window features of a trip picked up at ``pickup`` (naive UTC)."""
        with self._lock:
            snapshot = self._snapshot
        if not snapshot.get("as_of"):
            return self._fell_back(list(DEFAULTS))
        as_of = datetime.datetime.fromisoformat(snapshot["as_of"])
        wanted = floor_to_grid(pickup)
        if wanted - as_of > self.max_age:
            return self._fell_back(list(DEFAULTS))
        # A pickup after the snapshot gets the snapshot's newest windows: the best that is known.
        wanted = min(wanted, as_of)
        values, fell_back = dict(DEFAULTS), []
        for kind, zip_code, names in (("pickup_zip", pickup_zip, PICKUP_VALUES),
                                      ("dropoff_zip", dropoff_zip, DROPOFF_VALUES)):
            window = snapshot[kind].get(str(zip_code))
            window_end = datetime.datetime.fromisoformat(window["window_end"]) if window else None
            # Unknown zip, or a snapshot newer than the trip: the trip's own window is not held.
            if window_end is None or window_end > wanted:
                fell_back += names
            elif window_end == wanted:
                values.update({name: window[name] for name in names})
            # An older window means no trip in the pickup's window: the defaults are the true values.
        return self._fell_back(fell_back, values) if fell_back else Lookup(values)

    def _fell_back(self, names: list, values: dict | None = None) -> Lookup:
        with self._lock:
            self.fallbacks += 1
        return Lookup(dict(values or DEFAULTS), names)
