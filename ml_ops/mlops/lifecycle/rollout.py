"""A Challenger's gradual rollout, kept on its registered version.

The version's tags say where the rollout stands: its plan, the share of requests the Challenger
is served to, when the current step began, and whether the rollout still runs. ``mlops serve
--follow-rollout`` reads the share on every poll; the ``rollout`` task moves it; each move is an
event of the model's history, with its evidence.
"""
from dataclasses import dataclass

from mlops.errors import RegistryError
from mlops.lifecycle.registry import RegistryClient
from mlops.platform.home import utc_now

PLAN_TAG = "rollout_plan"
SHARE_TAG = "rollout_share"
STEP_STARTED_TAG = "rollout_step_started_at"
STATE_TAG = "rollout_state"

RUNNING = "running"
ROLLED_BACK = "rolled back"
PROMOTED = "promoted"


@dataclass(frozen=True)
class RolloutState:
    """Where one version's rollout stands."""

    version: str
    plan: str
    share: int
    step_started_at: str
    state: str

    @property
    def running(self) -> bool:
        return self.state == RUNNING


def read(registry: RegistryClient, version) -> RolloutState | None:
    """The rollout of ``version``; None when it never had one."""
    tags = registry.get_version(version).tags
    if STATE_TAG not in tags:
        return None
    try:
        share = int(tags.get(SHARE_TAG, "0"))
    except ValueError:
        raise RegistryError(f"model '{registry.name}' version {version} has {SHARE_TAG}="
                            f"'{tags.get(SHARE_TAG)}', not a percentage; set it to a step of its plan "
                            f"{tags.get(PLAN_TAG, '')}") from None
    return RolloutState(str(version), tags.get(PLAN_TAG, ""), share, tags.get(STEP_STARTED_TAG, ""),
                        tags[STATE_TAG])


def served_share(registry: RegistryClient, version) -> int:
    """The percent of requests ``version`` is to answer as Challenger: 0 unless its rollout runs."""
    state = read(registry, version)
    return state.share if state is not None and state.running else 0


def record(registry: RegistryClient, version, plan: str, share: int, state: str) -> RolloutState:
    """Write where the rollout of ``version`` now stands; a new share starts a new step."""
    started = utc_now("milliseconds")
    registry.set_tags(version, {PLAN_TAG: plan, SHARE_TAG: str(share), STEP_STARTED_TAG: started,
                                STATE_TAG: state})
    return RolloutState(str(version), plan, share, started, state)
