from types import SimpleNamespace

import pytest

from mlops.config import TrainingConfig
from mlops.errors import RegistryError
from mlops.local.dbutils import LocalDbutils
from mlops.local.session import LocalSession
from mlops.lifecycle.registry import CHAMPION
from mlops.stages.promotion import (NOT_PROMOTED, PENDING_APPROVAL, PROMOTED, compare_with_champion,
                                    compare_with_heuristic, decide, promote_challenger)


def metrics(rmse):
    return {"rmse": rmse, "mae": rmse * 0.8, "r2": 0.9}


@pytest.mark.parametrize("challenger, champion, tolerance, wins", [
    (3.0, 3.1, 0.0, True),
    (3.1, 3.1, 0.0, True),
    (3.2, 3.1, 0.0, False),
    (3.2, 3.1, 0.05, True),
    (3.0, 3.1, -0.05, False),
])
def test_challenger_wins_when_within_tolerance_of_champion(challenger, champion, tolerance, wins):
    comparison = compare_with_champion(metrics(challenger), metrics(champion), "4", tolerance, rows=100)
    assert comparison.challenger_wins is wins
    assert comparison.compared_with == "Champion v4"
    assert f"x (1 + {tolerance})" in comparison.rule


@pytest.mark.parametrize("challenger, heuristic, wins",
                         [(3.0, 3.5, True), (3.5, 3.5, False), (4.0, 3.5, False)])
def test_first_model_must_strictly_beat_the_heuristic(challenger, heuristic, wins):
    comparison = compare_with_heuristic(metrics(challenger), metrics(heuristic), rows=100)
    assert comparison.challenger_wins is wins
    assert comparison.compared_with == "heuristic"


@pytest.mark.parametrize("wins, require_approval, decision", [
    (True, False, PROMOTED), (True, True, PENDING_APPROVAL),
    (False, False, NOT_PROMOTED), (False, True, NOT_PROMOTED),
])
def test_decision(wins, require_approval, decision):
    comparison = compare_with_heuristic(metrics(3.0 if wins else 4.0), metrics(3.5), rows=10)
    assert decide(comparison, require_approval) == decision


def deploy_task(model_version, **params):
    session = LocalSession(job_name="taxi_fares_training", job_run_id="run-1")
    session.task_key = "deploy"
    config = TrainingConfig.from_params({"model_version": model_version} | params)
    return SimpleNamespace(task="deploy", config=config, dbutils=LocalDbutils(session),
                           annotate=lambda **dimensions: None)


@pytest.mark.parametrize("status", [None, "PENDING", "FAILED"])
def test_deploy_never_promotes_a_version_not_passed(register_version, registry, status):
    version = register_version()
    if status:
        registry.set_validation_status(version, status)
    run = deploy_task(version, registered_model_name=registry.name, promotion_tolerance="10",
                      require_approval="false")
    expected = (f"refusing to promote model '{registry.name}' version {version}: "
                f"its model_validation_status is {status or 'not set'}, not PASSED")
    with pytest.raises(RegistryError, match=expected):
        promote_challenger(run)
    assert registry.alias_version(CHAMPION) is None
