import pytest
from mlflow.exceptions import MlflowException

from mlops.errors import ConfigError, RegistryError
from mlops.lifecycle.registry import (APPROVAL_TAG, CHALLENGER, CHAMPION, VALIDATION_STATUS_TAG, ModelRef,
                                      RegistryClient)


def tags_of(registry, version):
    return registry.get_version(version).tags


def test_resolve_by_version_and_by_alias(register_version, registry):
    first = register_version()
    second = register_version()
    registry.set_alias(CHALLENGER, second)

    by_version = registry.resolve(first)
    by_alias = registry.resolve(CHALLENGER)

    assert by_version == ModelRef(registry.name, first, registry.get_version(first).run_id)
    assert by_alias.version == second
    assert by_alias.uri == f"models:/{registry.name}/{second}"


def test_unknown_version_names_model_and_version(register_version, registry):
    register_version()
    with pytest.raises(RegistryError, match=f"model '{registry.name}' version 99 does not exist") as caught:
        registry.get_version(99)
    assert isinstance(caught.value.__cause__, MlflowException)


def test_unknown_alias_lists_the_aliases_there_are(register_version, registry):
    version = register_version()
    registry.set_alias(CHALLENGER, version)
    with pytest.raises(RegistryError, match=f"has no alias 'Champion' \\(aliases: Challenger=v{version}\\)"):
        registry.resolve(CHAMPION)


def test_unknown_model_is_reported_as_missing(registry_store):
    with pytest.raises(RegistryError, match="model 'no_such_model' does not exist"):
        RegistryClient("no_such_model").registered_model()


def test_validation_status_moves_from_pending_to_passed(register_version, registry):
    version = register_version()
    assert registry.validation_status(version) is None
    registry.set_validation_status(version, "PENDING")
    assert tags_of(registry, version)[VALIDATION_STATUS_TAG] == "PENDING"
    registry.set_validation_status(version, "PASSED")
    assert registry.validation_status(version) == "PASSED"


def test_unknown_validation_status_is_refused(register_version, registry):
    version = register_version()
    with pytest.raises(RegistryError, match="validation status must be one of PENDING, PASSED, FAILED, "
                                            "got 'OK'"):
        registry.set_validation_status(version, "OK")


@pytest.mark.parametrize("move", ["deploy", "manual promotion"])
@pytest.mark.parametrize("status", [None, "PENDING", "FAILED"])
def test_a_version_not_passed_never_becomes_champion(register_version, registry, status, move):
    version = register_version()
    if status:
        registry.set_validation_status(version, status)
    expected = (f"refusing to make Champion model '{registry.name}' version {version}: "
                f"its model_validation_status is {status or 'not set'}")
    with pytest.raises(RegistryError, match=expected):
        if move == "deploy":
            registry.move_champion(version, registry.alias_version("Champion"), by="test", via="promotion")
        else:
            registry.promote(version, by="carol", reason="try")
    assert registry.alias_version(CHAMPION) is None


def test_champion_moves_in_one_step_and_challenger_is_removed(passed_version, registry):
    first = passed_version()
    registry.move_champion(first, registry.alias_version("Champion"), by="job run 1", via="promotion")
    second = passed_version()
    registry.set_alias(CHALLENGER, second)

    previous = registry.move_champion(second, registry.alias_version("Champion"), by="job run 2",
                                      via="promotion")

    assert previous == first
    assert registry.aliases() == {CHAMPION: second}
    assert tags_of(registry, second)["champion_previous_version"] == first
    assert tags_of(registry, second)["champion_set_by"] == "job run 2"
    assert tags_of(registry, first)["champion_replaced_by"] == second


def test_challenger_on_another_version_is_kept(passed_version, registry):
    first, second = passed_version(), passed_version()
    registry.set_alias(CHALLENGER, second)
    registry.move_champion(first, registry.alias_version("Champion"), by="test", via="promotion")
    assert registry.aliases() == {CHAMPION: first, CHALLENGER: second}


def test_describe_writes_the_version_description(register_version, registry):
    version = register_version()
    registry.describe(version, "Validation PASSED\n- PASS rmse_max")
    assert registry.get_version(version).description == "Validation PASSED\n- PASS rmse_max"


def test_approve_makes_a_pending_version_champion(passed_version, registry):
    champion, waiting = passed_version(), passed_version()
    registry.move_champion(champion, registry.alias_version("Champion"), by="job", via="promotion")
    registry.set_tags(waiting, {APPROVAL_TAG: "pending"})

    previous = registry.approve(waiting, by="alice")

    assert previous == champion
    assert registry.alias_version(CHAMPION) == waiting
    tags = tags_of(registry, waiting)
    assert (tags[APPROVAL_TAG], tags["approved_by"]) == ("approved", "alice")
    assert tags["champion_set_via"] == "approval"


def test_approve_refuses_a_failed_version(register_version, registry):
    version = register_version()
    registry.set_validation_status(version, "FAILED")
    registry.set_tags(version, {APPROVAL_TAG: "pending"})
    with pytest.raises(RegistryError, match=f"refusing to approve model '{registry.name}' version {version}: "
                                            "its model_validation_status is FAILED, not PASSED"):
        registry.approve(version, by="alice")
    assert registry.alias_version(CHAMPION) is None


def test_approve_refuses_a_version_not_waiting_for_approval(passed_version, registry):
    version = passed_version()
    with pytest.raises(RegistryError, match="its approval tag is not set, not pending"):
        registry.approve(version, by="alice")
    assert registry.alias_version(CHAMPION) is None


def test_approve_refuses_a_version_older_than_the_champion(passed_version, registry):
    waiting, champion = passed_version(), passed_version()
    registry.set_tags(waiting, {APPROVAL_TAG: "pending"})
    registry.move_champion(champion, registry.alias_version("Champion"), by="job", via="promotion")
    with pytest.raises(RegistryError, match=f"the Champion is already the later version {champion}; "
                                            "use rollback"):
        registry.approve(waiting, by="alice")
    assert registry.alias_version(CHAMPION) == champion


def test_rollback_moves_champion_back_and_records_who_and_why(passed_version, registry):
    first, second = passed_version(), passed_version()
    registry.move_champion(first, registry.alias_version("Champion"), by="job", via="promotion")
    registry.move_champion(second, registry.alias_version("Champion"), by="job", via="promotion")

    previous = registry.rollback(first, by="bob", reason="v2 overcharges airport trips")

    assert previous == second
    assert registry.alias_version(CHAMPION) == first
    tags = tags_of(registry, first)
    assert tags["rollback_by"] == "bob"
    assert tags["rollback_reason"] == "v2 overcharges airport trips"
    assert tags["rollback_from_version"] == second
    assert tags["champion_set_via"] == "rollback"


def test_rollback_refuses_a_version_not_passed(passed_version, register_version, registry):
    failed = register_version()
    registry.set_validation_status(failed, "FAILED")
    champion = passed_version()
    registry.move_champion(champion, registry.alias_version("Champion"), by="job", via="promotion")
    expected = f"refusing to make Champion model '{registry.name}' version {failed}: "
    with pytest.raises(RegistryError, match=f"{expected}its model_validation_status is FAILED"):
        registry.rollback(failed, by="bob", reason="try")
    assert registry.alias_version(CHAMPION) == champion


@pytest.mark.parametrize("target, reason, message", [
    ("later", "why",
     "rollback target must be earlier than the Champion \\(version {first}\\), got version {later}"),
    ("first", "  ", "rollback of model '{name}' needs a reason"),
    ("v1", "why", "a model version is a number, got 'v1'"),
])
def test_rollback_bad_input_messages(passed_version, registry, target, reason, message):
    first, later = passed_version(), passed_version()
    registry.move_champion(first, registry.alias_version("Champion"), by="job", via="promotion")
    versions = {"later": later, "first": first, "v1": "v1"}
    with pytest.raises(RegistryError, match=message.format(first=first, later=later, name=registry.name)):
        registry.rollback(versions[target], by="bob", reason=reason)
    assert registry.alias_version(CHAMPION) == first


def test_rollback_without_a_champion_is_refused(passed_version, registry):
    version = passed_version()
    with pytest.raises(RegistryError, match="has no Champion, so there is nothing to roll back"):
        registry.rollback(version, by="bob", reason="why")


def test_unity_catalog_needs_three_level_names():
    with pytest.raises(ConfigError, match="'taxi_fares' must be catalog.schema.model when registry_uri "
                                          "is databricks-uc"):
        RegistryClient("taxi_fares", "databricks-uc")
    with pytest.raises(ConfigError, match="must be catalog.schema.model"):
        RegistryClient("main..taxi_fares", "databricks-uc")


def test_a_unity_catalog_model_lives_in_the_local_store_on_a_laptop(registry_store):
    client = RegistryClient("main.ml.taxi_fares", "databricks-uc")
    assert (client.name, client.registry_uri) == ("main.ml.taxi_fares", client.tracking_uri)
    assert client.tracking_uri.startswith("sqlite:")
    assert ModelRef(client.name, "3").uri == "models:/main.ml.taxi_fares/3"


def test_workspace_registry_rejects_path_like_names(registry_store):
    with pytest.raises(ConfigError, match="'models/taxi_fares' must be a plain model name"):
        RegistryClient("models/taxi_fares")


@pytest.mark.timeout(120)
def test_an_unreachable_registry_is_named_before_any_spark_work(registry_store):
    from mlops.config import TrainingConfig
    from mlops.lifecycle import tracking
    from support.ports import free_port

    registry_uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match=f"^the model registry {registry_uri} cannot be reached: "):
        tracking.configure(TrainingConfig.from_params({"registry_uri": registry_uri}))
