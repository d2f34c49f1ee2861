"""The served model: one slot swapped atomically, and a watcher that follows the alias.

The slot holds an immutable :class:`ServedModel`. A request takes the slot's model once and
scores with it to the end, so a swap never changes a model under a request in flight. The
:class:`AliasWatcher` polls the registry; when the alias names another version it loads that
version, warms it with one prediction, and swaps it in. A version whose validation tag is not
PASSED is never loaded: the old one keeps serving and the reason is kept for ``/health``.
"""
import datetime
import logging
import threading
from dataclasses import dataclass

import lightgbm
import numpy as np

from mlops.errors import RegistryError
from mlops.inference import engine
from mlops.lifecycle.registry import VALIDATION_STATUS_TAG, RegistryClient

logger = logging.getLogger(__name__)

PASSED = "PASSED"


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    feature_names: tuple
    booster: lightgbm.Booster
    loaded_at: str

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return self.booster.predict(matrix, num_threads=1)


def load_version(registry: RegistryClient, version: str) -> ServedModel:
    """Load and warm ``version``; RegistryError when it is missing or not PASSED."""
    status = registry.validation_status(version)
    if status != PASSED:
        raise RegistryError(f"model '{registry.name}' version {version} has {VALIDATION_STATUS_TAG}="
                            f"{status or 'unset'}; only PASSED versions are served")
    scoring = engine.load_scoring_model(f"models:/{registry.name}/{version}")
    booster = lightgbm.Booster(model_str=scoring.text)
    booster.predict(np.zeros((1, len(scoring.feature_names))), num_threads=1)
    loaded_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return ServedModel(registry.name, str(version), scoring.feature_names, booster, loaded_at)


class ModelSlot:
    """The model requests are scored with; ``current`` is one atomic read."""

    def __init__(self, model: ServedModel):
        self.current = model
        self.refused = ""

    def swap(self, model: ServedModel) -> ServedModel:
        previous, self.current = self.current, model
        return previous


class AliasWatcher(threading.Thread):
    """Polls ``alias`` every ``interval`` seconds and swaps in the version it names."""

    def __init__(self, registry: RegistryClient, alias: str, slot: ModelSlot, interval: float,
                 on_switch=None, on_poll=None):
        super().__init__(name=f"alias-watcher-{alias}", daemon=True)
        self.registry, self.alias, self.slot, self.interval = registry, alias, slot, interval
        self.on_switch = on_switch or (lambda previous, model: None)
        # Also called each poll: the server reloads a newer feature snapshot on the same beat.
        self.on_poll = on_poll or (lambda: None)
        self._stop_event = threading.Event()
        self._refused_version = None

    def stop(self):
        self._stop_event.set()

    def run(self):
        while not self._stop_event.wait(self.interval):
            try:
                self.on_poll()
                self.check_once()
            except Exception as error:  # the server keeps serving; the next poll tries again
                logger.warning("cannot follow alias %s of model %s: %s: %s", self.alias,
                               self.registry.name, type(error).__name__, error)

    def check_once(self) -> bool:
        """Swap when the alias moved to a servable version; True when it swapped."""
        version = self.registry.alias_version(self.alias)
        if version is None or version == self.slot.current.version:
            return False
        if version == self._refused_version and self.registry.validation_status(version) != PASSED:
            # Still refused; a version re-tagged PASSED is loaded on this poll.
            return False
        try:
            model = load_version(self.registry, version)
        except Exception as error:
            self._refused_version = version
            self.slot.refused = f"version {version} not loaded: {error}"
            logger.warning("alias %s moved to version %s, which is not served (%s); still serving "
                           "version %s", self.alias, version, error, self.slot.current.version)
            return False
        previous = self.slot.swap(model)
        self._refused_version, self.slot.refused = None, ""
        logger.info("model %s: alias %s moved from version %s to %s; switched", model.name, self.alias,
                    previous.version, model.version)
        self.on_switch(previous, model)
        return True
