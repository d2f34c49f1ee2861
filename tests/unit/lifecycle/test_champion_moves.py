"""Champion moves: compare-and-set (also across processes), roll-forward, pins, and the history."""
import os
import re
import subprocess
import sys
import textwrap

import mlflow
import pytest

from mlops.errors import RegistryError
from mlops.lifecycle.registry import CHAMPION, ChampionMoved


def test_a_move_that_expects_another_champion_fails_naming_both(passed_version, registry):
    first, second = passed_version(), passed_version()
    registry.move_champion(first, None, by="job a", via="promotion")
    with pytest.raises(ChampionMoved, match=f"version {second} the Champion: the move expected to replace no "
                                            f"Champion, but the Champion is now version {first}"):
        registry.move_champion(second, None, by="job b", via="promotion")
    assert registry.alias_version(CHAMPION) == first


RACER = textwrap.dedent("""
    import os, sys, time
    from mlops.lifecycle.registry import RegistryClient
    name, version, start_file = sys.argv[1:4]
    while not os.path.exists(start_file):
        time.sleep(0.01)
    previous = RegistryClient(name).move_champion(version, None, by=f"racer {version}", via="promotion")
    print(f"moved to {version}")
""")


def test_two_processes_racing_for_the_champion_one_wins_one_names_both(passed_version, registry, tmp_path):
    first, second = passed_version(), passed_version()
    start = tmp_path / "go"
    environment = dict(os.environ)
    racers = [subprocess.Popen([sys.executable, "-c", RACER, registry.name, version, str(start)],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for version in (first, second)]
    start.touch()
    results = [racer.communicate(timeout=120) + (racer.returncode,) for racer in racers]

    winners = [index for index, (_, _, code) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    winner = (first, second)[winners[0]]
    loser = (second, first)[winners[0]]
    loser_error = results[1 - winners[0]][1]
    assert f"refusing to make model '{registry.name}' version {loser} the Champion: the move expected to " \
           f"replace no Champion, but the Champion is now version {winner}" in loser_error
    assert registry.alias_version(CHAMPION) == winner


def test_a_recrowned_version_has_no_stale_replaced_by_tag(passed_version, registry):
    first, second = passed_version(), passed_version()
    registry.move_champion(first, None, by="a", via="promotion")
    registry.move_champion(second, first, by="b", via="promotion")
    assert registry.get_version(first).tags["champion_replaced_by"] == second
    registry.promote(first, by="carol", reason="v2 overcharges")
    assert registry.get_version(first).tags["champion_replaced_by"] == ""
    assert registry.get_version(second).tags["champion_replaced_by"] == first


def test_rollback_pins_and_promote_rolls_forward(passed_version, registry):
    first, second = passed_version(), passed_version()
    registry.move_champion(first, None, by="a", via="promotion")
    registry.move_champion(second, first, by="b", via="promotion")
    registry.rollback(first, by="bob", reason="drift in v2")
    pin = registry.pinned()
    assert pin["by"] == "bob" and "drift in v2" in pin["reason"]

    # A promotion while pinned is refused, naming the pin and how to lift it; nothing moves.
    expected = (f"refusing to promote: model '{registry.name}' is pinned by bob at {pin['at']} (rolled "
                f"back from version {second}: drift in v2); unpin it first with "
                f"`mlops model unpin {registry.name}`")
    with pytest.raises(RegistryError, match=re.escape(expected)):
        registry.promote(second, by="carol", reason="v2 fixed")
    assert registry.alias_version(CHAMPION) == first
    # Another pin does not silently replace this one.
    with pytest.raises(RegistryError, match="is pinned by bob at .*; unpin it first"):
        registry.pin("carol", "investigating")
    assert registry.pinned() == pin

    registry.unpin("carol")
    registry.promote(second, by="carol", reason="v2 fixed")
    assert registry.alias_version(CHAMPION) == second and registry.pinned() is None


def test_manual_actions_need_a_reason_and_unpin_needs_a_pin(passed_version, registry):
    version = passed_version()
    with pytest.raises(RegistryError, match="promoting model .* by hand needs a reason"):
        registry.promote(version, by="carol", reason=" ")
    with pytest.raises(RegistryError, match="pinning model .* needs a reason"):
        registry.pin("carol", "")
    with pytest.raises(RegistryError, match="is not pinned; nothing to unpin"):
        registry.unpin("carol")


def test_the_history_keeps_every_event_in_order(passed_version, registry):
    first, second = passed_version(), passed_version()
    registry.move_champion(first, None, by="a", via="promotion")
    registry.move_champion(second, first, by="b", via="promotion")
    registry.rollback(first, by="bob", reason="drift")
    events = [(event["event"], event["version"]) for event in registry.history.events()]
    assert events == [("became Champion", first), ("lost Champion", first), ("became Champion", second),
                      ("lost Champion", second), ("became Champion", first), ("rolled back to", first),
                      ("pinned", first)]


def test_a_refused_action_logs_no_mlflow_run(register_version, registry):
    from mlops.lifecycle.model_admin import approve

    version = register_version()
    experiment = "/Shared/refusals"
    with pytest.raises(RegistryError, match="refusing to approve"):
        approve(registry.name, version, "carol", experiment=experiment)
    found = mlflow.get_experiment_by_name(experiment)
    assert found is None or mlflow.search_runs([found.experiment_id]).empty
