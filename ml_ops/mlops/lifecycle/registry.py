"""Model references and the registry operations of the model lifecycle.

One ``RegistryClient`` per registered model wraps ``mlflow.MlflowClient``. It speaks to the
workspace registry (plain names) or to Unity Catalog (``registry_uri="databricks-uc"`` and
``catalog.schema.model`` names). MLflow errors are wrapped here, once, in RegistryError
naming the model and version.

Lifecycle state lives on the registry itself:

* tag ``model_validation_status``: PENDING, then PASSED or FAILED;
* alias ``Challenger``: the latest version that passed validation and awaits comparison;
* alias ``Champion``: the version scoring uses; it moves in one ``set_registered_model_alias``
  call, so a reader resolving ``@Champion`` sees the old version or the new one, never neither;
* tag ``approval``: ``pending`` while a promotion waits for a person, then ``approved``;
* ``promotion_*``, ``champion_*`` and ``rollback_*`` tags: the latest decision, when, by whom;
* registered-model tag ``champion_pinned``: automatic promotion is stopped (a rollback pins);
* the model's history (:mod:`mlops.lifecycle.history`): every event, append-only.

Every Champion move is compare-and-set: the caller names the version it expects to replace,
and the move fails, naming both versions, when another move got there first. Locally the
check and the move happen under one lock; the version's tags are written before the alias
moves, so a version never becomes Champion without them.
"""
import contextlib
import logging
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops import platform
from mlops.errors import RegistryError
from mlops.lifecycle import tracking
from mlops.lifecycle.history import ModelHistory
from mlops.platform.home import utc_now

logger = logging.getLogger(__name__)

CHALLENGER = "Challenger"
CHAMPION = "Champion"

VALIDATION_STATUS_TAG = "model_validation_status"
PENDING = "PENDING"
PASSED = "PASSED"
FAILED = "FAILED"
VALIDATION_STATUSES = (PENDING, PASSED, FAILED)

APPROVAL_TAG = "approval"
APPROVAL_PENDING = "pending"
APPROVED = "approved"

# Which person or job moved the Champion alias to a version, and how.
CHAMPION_SET_AT_TAG = "champion_set_at"
CHAMPION_SET_BY_TAG = "champion_set_by"
CHAMPION_SET_VIA_TAG = "champion_set_via"
CHAMPION_PREVIOUS_TAG = "champion_previous_version"
CHAMPION_REPLACED_BY_TAG = "champion_replaced_by"
CHAMPION_REPLACED_AT_TAG = "champion_replaced_at"
APPROVED_BY_TAG = "approved_by"
APPROVED_AT_TAG = "approved_at"
ROLLBACK_BY_TAG = "rollback_by"
ROLLBACK_REASON_TAG = "rollback_reason"
ROLLBACK_FROM_TAG = "rollback_from_version"
ROLLBACK_AT_TAG = "rollback_at"
PINNED_TAG = "champion_pinned"
NO_CHAMPION = "none"


class ChampionMoved(RegistryError):
    """A compare-and-set Champion move lost: the Champion is not the version the move expected."""

    def __init__(self, model: str, version, expected, found):
        self.expected, self.found = expected, found
        super().__init__(
            f"refusing to make model '{model}' version {version} the {CHAMPION}: the move expected to "
            f"replace {_named(expected)}, but the {CHAMPION} is now {_named(found)} (another move got "
            "there first); compare again with the new Champion before moving it")


def _named(version) -> str:
    return f"version {version}" if version else "no Champion"


_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def task_values(self) -> dict:
        return {"model_name": self.name, "model_version": str(self.version),
                "model_uri": self.uri, "training_run_id": self.run_id}


def _listed(aliases: dict) -> str:
    return ", ".join(f"{alias}=v{version}" for alias, version in sorted(aliases.items())) or "none"


class RegistryClient:
    """Lifecycle operations on one registered model."""

    def __init__(self, model_name: str, registry_uri: str = "", tracking_uri: str | None = None):
        tracking.validate_model_name(model_name, registry_uri)
        self.name = model_name
        self.tracking_uri = tracking_uri or tracking.tracking_uri()
        self.registry_uri = platform.current().registry_store(registry_uri, self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        self.history = ModelHistory(MlflowClient(tracking_uri=self.tracking_uri), model_name)

    @classmethod
    def from_config(cls, config) -> "RegistryClient":
        return cls(config.registered_model_name, config.registry_uri)

    def __repr__(self):
        return f"RegistryClient({self.name!r}, registry {self.registry_uri.split('?')[0]!r})"

    @contextlib.contextmanager
    def _call(self, action: str, version=None):
        """Wrap an MLflow failure once, naming the model and version it was about."""
        subject = f"model '{self.name}'" + (f" version {version}" if version is not None else "")
        try:
            yield
        except MlflowException as error:
            if error.error_code == _NOT_FOUND:
                raise RegistryError(f"{subject} does not exist in the registry "
                                    f"{self.registry_uri.split('?')[0]} ({action})") from error
            raise RegistryError(f"{action} failed for {subject}: {error.message}") from error

    # ------------------------------------------------------------ reading

    def get_version(self, version):
        with self._call("get model version", version):
            return self.client.get_model_version(self.name, str(version))

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points to, or None when the alias is not set."""
        return self.aliases().get(alias)

    def aliases(self) -> dict:
        """alias -> version, versions as strings whatever the store returns."""
        return {alias: str(version) for alias, version in self.registered_model().aliases.items()}

    def resolve(self, alias_or_version) -> ModelRef:
        """A ModelRef for ``"3"``, ``3`` or an alias such as ``"Champion"``, resolved once."""
        text = str(alias_or_version).strip()
        if not text.isdigit():
            aliases = self.aliases()
            if text not in aliases:
                raise RegistryError(f"model '{self.name}' has no alias '{text}' "
                                    f"(aliases: {_listed(aliases)})")
            text = aliases[text]
        version = self.get_version(text)
        return ModelRef(self.name, str(version.version), run_id=version.run_id or "")

    def list_versions(self) -> list:
        """Every version of the model, oldest first."""
        with self._call("list versions"):
            versions = list(self.client.search_model_versions(f"name = '{self._quoted_name()}'"))
        return sorted(versions, key=lambda item: int(item.version))

    def exists(self) -> bool:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as error:
            if error.error_code == _NOT_FOUND:
                return False
            raise RegistryError(f"get registered model failed for model '{self.name}': {error.message}") \
                from error
        return True

    def registered_model(self):
        with self._call("get registered model"):
            return self.client.get_registered_model(self.name)

    def validation_status(self, version) -> str | None:
        return self.get_version(version).tags.get(VALIDATION_STATUS_TAG)

    def training_run(self, version):
        """The MLflow run that logged ``version``: its params, metrics and lineage tags."""
        run_id = self.get_version(version).run_id
        if not run_id:
            raise RegistryError(f"model '{self.name}' version {version} has no training run")
        return self.run(run_id, version)

    def run(self, run_id: str, version=None):
        with self._call(f"read MLflow run {run_id}", version):
            return self.client.get_run(run_id)

    def _quoted_name(self) -> str:
        return self.name.replace("'", "\\'")

    # ------------------------------------------------------------ writing

    def set_tags(self, version, tags: dict):
        with self._call("set version tags", version):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def set_validation_status(self, version, status: str):
        if status not in VALIDATION_STATUSES:
            raise RegistryError(f"validation status must be one of {', '.join(VALIDATION_STATUSES)}, "
                                f"got {status!r}")
        self.set_tags(version, {VALIDATION_STATUS_TAG: status})
        logger.info("model %s version %s: %s=%s", self.name, version, VALIDATION_STATUS_TAG, status)

    def describe(self, version, text: str):
        with self._call("update description", version):
            self.client.update_model_version(self.name, str(version), description=text)

    def set_alias(self, alias: str, version):
        with self._call(f"set alias {alias}", version):
            self.client.set_registered_model_alias(self.name, alias, str(version))
        logger.info("model %s: alias %s -> version %s", self.name, alias, version)

    def delete_alias(self, alias: str):
        with self._call(f"delete alias {alias}"):
            self.client.delete_registered_model_alias(self.name, alias)
        logger.info("model %s: alias %s removed", self.name, alias)

    def require_passed(self, version, action: str):
        """Refuse ``action`` on a version whose validation status is not PASSED."""
        status = self.validation_status(version)
        if status != PASSED:
            raise RegistryError(
                f"refusing to {action} model '{self.name}' version {version}: its "
                f"{VALIDATION_STATUS_TAG} is {status or 'not set'}, not {PASSED}")

    def move_champion(self, version, expected, by: str, via: str, reason: str = "") -> str | None:
        """Make PASSED ``version`` the Champion if the Champion is still ``expected`` (None: no Champion).

        Tags first, then the one alias call, then the old Champion's tags and the history event.
        Raises :class:`ChampionMoved` when another move got there first. Returns the previous Champion.
        """
        version = str(_version_number(version))
        expected = str(expected) if expected else None
        self.require_passed(version, f"make {CHAMPION}")
        with platform.named_lock(f"registry-{self.name}"):
            current = self.alias_version(CHAMPION)
            if current != expected:
                raise ChampionMoved(self.name, version, expected, current)
            if current == version:
                return current
            self.set_tags(version, {CHAMPION_SET_AT_TAG: utc_now(), CHAMPION_SET_BY_TAG: by,
                                    CHAMPION_SET_VIA_TAG: via, CHAMPION_PREVIOUS_TAG: current or NO_CHAMPION,
                                    CHAMPION_REPLACED_BY_TAG: "", CHAMPION_REPLACED_AT_TAG: ""})
            # The single switch: scoring resolves @Champion to the old version or the new one.
            self.set_alias(CHAMPION, version)
            found = self.alias_version(CHAMPION)
            if found != version:
                raise ChampionMoved(self.name, version, version, found)
        if self.alias_version(CHALLENGER) == version:
            self.delete_alias(CHALLENGER)
        if current:
            self.set_tags(current, {CHAMPION_REPLACED_BY_TAG: version, CHAMPION_REPLACED_AT_TAG: utc_now()})
            self.history.append("lost Champion", current, by, champion_replaced_by=version)
        self.history.append("became Champion", version, by, champion_set_via=via,
                            champion_previous_version=current or NO_CHAMPION, reason=reason or None)
        return current

    # ------------------------------------------------------------ manual actions

    def pinned(self) -> dict | None:
        """Who pinned the Champion, when and why; None when automatic promotion runs."""
        raw = self.registered_model().tags.get(PINNED_TAG)
        if not raw:
            return None
        by, _, rest = raw.partition("|")
        at, _, reason = rest.partition("|")
        return {"by": by, "at": at, "reason": reason}

    def _pin_described(self, pin: dict) -> str:
        return f"model '{self.name}' is pinned by {pin['by']} at {pin['at']} ({pin['reason']})"

    def pin(self, by: str, reason: str, replace: bool = False):
        """Stop automatic promotion: deploy tasks then leave the Champion where it is.

        An existing pin is refused, naming it, unless ``replace`` (a rollback re-pins; the history
        records the pin it replaced).
        """
        if not reason or not reason.strip():
            raise RegistryError(f"pinning model '{self.name}' needs a reason (--reason TEXT)")
        held = self.pinned()
        if held is not None and not replace:
            raise RegistryError(f"{self._pin_described(held)}; unpin it first with "
                                f"`mlops model unpin {self.name}`")
        with self._call("pin the Champion"):
            self.client.set_registered_model_tag(self.name, PINNED_TAG, f"{by}|{utc_now()}|{reason.strip()}")
        self.history.append("pinned", self.alias_version(CHAMPION), by, reason=reason.strip(),
                            replaced_pin=f"{held['by']}: {held['reason']}" if held else None)

    def unpin(self, by: str):
        if self.pinned() is None:
            raise RegistryError(f"model '{self.name}' is not pinned; nothing to unpin")
        with self._call("unpin the Champion"):
            self.client.delete_registered_model_tag(self.name, PINNED_TAG)
        self.history.append("unpinned", self.alias_version(CHAMPION), by)

    def promote(self, version, by: str, reason: str) -> str | None:
        """Make any PASSED version the Champion by hand (a roll-forward); returns the previous one."""
        if not reason or not reason.strip():
            raise RegistryError(f"promoting model '{self.name}' by hand needs a reason (--reason TEXT)")
        held = self.pinned()
        if held is not None:
            raise RegistryError(f"refusing to promote: {self._pin_described(held)}; unpin it first with "
                                f"`mlops model unpin {self.name}`, or roll back instead")
        current = self.alias_version(CHAMPION)
        if current == str(version):
            raise RegistryError(f"model '{self.name}' version {version} already is the {CHAMPION}")
        return self.move_champion(version, current, by, via="manual promotion", reason=reason.strip())

    def approve(self, version, by: str) -> str | None:
        """Make a PASSED version awaiting approval the Champion; returns the previous Champion."""
        self.require_passed(version, "approve")
        approval = self.get_version(version).tags.get(APPROVAL_TAG)
        if approval != APPROVAL_PENDING:
            raise RegistryError(
                f"refusing to approve model '{self.name}' version {version}: its {APPROVAL_TAG} tag is "
                f"{approval or 'not set'}, not {APPROVAL_PENDING} (only a version the deploy task found "
                "better and left for approval can be approved; use promote or rollback otherwise)")
        current = self.alias_version(CHAMPION)
        if current is not None and int(current) > _version_number(version):
            raise RegistryError(
                f"refusing to approve model '{self.name}' version {version}: the {CHAMPION} is already the "
                f"later version {current}; use rollback to go back to an earlier version")
        self.set_tags(version, {APPROVAL_TAG: APPROVED, APPROVED_BY_TAG: by, APPROVED_AT_TAG: utc_now()})
        previous = self.move_champion(version, current, by=by, via="approval")
        self.history.append("approved", version, by)
        return previous

    def rollback(self, version, by: str, reason: str, pin: bool = True) -> str:
        """Move Champion back to an earlier PASSED version and pin it (unless ``pin`` is False)."""
        if not reason or not reason.strip():
            raise RegistryError(f"rollback of model '{self.name}' needs a reason (--reason TEXT)")
        target = _version_number(version)
        current = self.alias_version(CHAMPION)
        if current is None:
            raise RegistryError(f"model '{self.name}' has no {CHAMPION}, so there is nothing to roll back")
        if target >= int(current):
            raise RegistryError(
                f"rollback target must be earlier than the {CHAMPION} (version {current}), "
                f"got version {target}; use promote to roll forward")
        self.require_passed(target, f"make {CHAMPION}")
        self.set_tags(target, {ROLLBACK_BY_TAG: by, ROLLBACK_REASON_TAG: reason.strip(),
                               ROLLBACK_FROM_TAG: current, ROLLBACK_AT_TAG: utc_now()})
        self.move_champion(target, current, by=by, via="rollback", reason=reason.strip())
        self.history.append("rolled back to", target, by, rollback_from_version=current,
                            reason=reason.strip())
        if pin:
            self.pin(by, f"rolled back from version {current}: {reason.strip()}", replace=True)
        return current


def _version_number(version) -> int:
    text = str(version).strip()
    if not text.isdigit():
        raise RegistryError(f"a model version is a number, got {version!r}")
    return int(text)


def registered_models(registry_uri: str = "", tracking_uri: str | None = None) -> list:
    """Every registered model of the registry, by name."""
    tracking_uri = tracking_uri or tracking.tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri,
                          registry_uri=platform.current().registry_store(registry_uri, tracking_uri))
    try:
        models = list(client.search_registered_models(max_results=1000))
    except MlflowException as error:
        raise RegistryError(f"listing registered models failed: {error.message}") from error
    return sorted(models, key=lambda model: model.name)
