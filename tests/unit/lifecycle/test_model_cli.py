import argparse

import mlflow
import pytest

from mlops.cli import model as model_cli
from mlops.lifecycle.model_admin import format_table
from mlops.lifecycle.registry import APPROVAL_TAG, CHALLENGER, CHAMPION


def mlops_model(*argv):
    """Parse and run ``mlops model ...`` as the CLI does; returns the exit code."""
    parser = argparse.ArgumentParser(prog="mlops")
    model_cli.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["model", *argv])
    return args.func(args)


def test_show_lists_versions_aliases_status_and_history(passed_version, register_version, registry, capsys):
    champion = passed_version()
    registry.move_champion(champion, registry.alias_version("Champion"), by="job taxi_fares_training run r1",
                           via="promotion")
    challenger = passed_version(num_rounds=20)
    registry.set_alias(CHALLENGER, challenger)
    failed = register_version()
    registry.set_validation_status(failed, "FAILED")
    registry.set_tags(challenger, {APPROVAL_TAG: "pending"})
    registry.history.append("deploy decision", challenger, "job r2", promotion_decision="pending_approval")

    assert mlops_model("show", registry.name) == 0

    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("version"))
    assert header.split() == "version aliases validation approval rmse created (UTC) run id".split()
    rows = {line.split()[0]: line.split() for line in lines if line[:1].isdigit() and len(line.split()) > 5}
    assert rows[champion][1:4] == [CHAMPION, "PASSED", "-"]
    assert rows[challenger][1:4] == [CHALLENGER, "PASSED", "pending"]
    assert rows[failed][1:3] == ["-", "FAILED"]
    assert "became Champion" in out
    assert "promotion_decision=pending_approval" in out


def test_list_shows_champion_and_challenger(passed_version, registry, capsys):
    first, second = passed_version(), passed_version()
    registry.move_champion(first, registry.alias_version("Champion"), by="job", via="promotion")
    registry.set_alias(CHALLENGER, second)

    assert mlops_model("list") == 0

    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(registry.name))
    assert row.split()[1:4] == [second, first, second]


def test_approve_moves_champion_and_logs_an_audit_run(passed_version, registry, capsys):
    version = passed_version()
    registry.set_tags(version, {APPROVAL_TAG: "pending"})

    assert mlops_model("approve", registry.name, version, "--by", "alice") == 0

    assert f"version {version} approved by alice" in capsys.readouterr().out
    assert registry.alias_version(CHAMPION) == version
    tags = registry.get_version(version).tags
    audit = mlflow.get_run(tags["approval_run_id"])
    assert (audit.data.tags["action"], audit.data.tags["by"]) == ("approve", "alice")
    assert audit.info.status == "FINISHED"


def test_approve_of_a_failed_version_exits_non_zero_with_one_line(register_version, registry, capsys):
    version = register_version()
    registry.set_validation_status(version, "FAILED")
    registry.set_tags(version, {APPROVAL_TAG: "pending"})
    capsys.readouterr()

    assert mlops_model("approve", registry.name, version) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: refusing to approve model '{registry.name}' version {version}: "
                          "its model_validation_status is FAILED, not PASSED")
    assert registry.alias_version(CHAMPION) is None


def test_rollback_records_who_and_why_on_the_version_and_in_a_run(passed_version, registry, capsys):
    first, second = passed_version(), passed_version()
    registry.move_champion(first, registry.alias_version("Champion"), by="job", via="promotion")
    registry.move_champion(second, registry.alias_version("Champion"), by="job", via="promotion")

    code = mlops_model("rollback", registry.name, first, "--reason", "v2 overcharges airport trips",
                       "--by", "bob")

    assert code == 0
    assert f"rolled back from version {second} to version {first} by bob" in capsys.readouterr().out
    tags = registry.get_version(first).tags
    assert (tags["rollback_by"], tags["rollback_reason"]) == ("bob", "v2 overcharges airport trips")
    audit = mlflow.get_run(tags["rollback_run_id"])
    assert audit.data.tags["reason"] == "v2 overcharges airport trips"
    assert mlops_model("show", registry.name) == 0
    assert "rolled back to" in capsys.readouterr().out


def test_rollback_to_a_version_not_passed_is_refused(passed_version, register_version, registry, capsys):
    pending = register_version()
    registry.set_validation_status(pending, "PENDING")
    champion = passed_version()
    registry.move_champion(champion, registry.alias_version("Champion"), by="job", via="promotion")

    assert mlops_model("rollback", registry.name, pending, "--reason", "r") == 1

    assert "its model_validation_status is PENDING, not PASSED" in capsys.readouterr().err
    assert registry.alias_version(CHAMPION) == champion


def test_rollback_needs_a_reason(registry):
    with pytest.raises(SystemExit):
        mlops_model("rollback", registry.name, "1")


def test_show_of_an_unknown_model_says_so(registry_store, capsys):
    assert mlops_model("show", "no_such_model") == 1
    assert capsys.readouterr().err.startswith("error: model 'no_such_model' does not exist in the registry")


def test_show_of_a_bad_unity_catalog_name_names_the_rule(registry_store, capsys):
    assert mlops_model("show", "taxi_fares", "--registry-uri", "databricks-uc") == 1
    assert "must be catalog.schema.model when registry_uri is databricks-uc" in capsys.readouterr().err


def test_table_columns_are_aligned():
    text = format_table(["a", "long header"], [["value", 1]])
    header, rule, row = text.splitlines()
    assert row.index("1") == header.index("long header")
    assert set(rule.replace(" ", "")) == {"-"}
