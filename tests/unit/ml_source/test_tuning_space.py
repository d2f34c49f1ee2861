import pytest
from taxi_fares.training import TrainingParams
from taxi_fares.tuning import DEFAULT_SPACE, TUNABLE, SearchSpace

from mlops.config import TrainingConfig
from mlops.errors import ConfigError


class FixedTrial:
    """Answers each suggestion with the lower or upper bound, as Optuna's trial would within them."""

    def __init__(self, upper: bool):
        self.upper, self.asked = upper, {}

    def suggest_int(self, name, low, high, log=False):
        self.asked[name] = (int, log)
        return high if self.upper else low

    def suggest_float(self, name, low, high, log=False):
        self.asked[name] = (float, log)
        return high if self.upper else low


def test_the_default_space_searches_every_tunable_hyperparameter_with_its_type():
    space = SearchSpace.parse(DEFAULT_SPACE)
    assert set(space.names) == set(TUNABLE)
    trial = FixedTrial(upper=True)
    params = space.sample(trial, TrainingParams())
    assert {name: kind for name, (kind, _) in trial.asked.items()} == TUNABLE
    assert trial.asked["learning_rate"][1] and not trial.asked["feature_fraction"][1]
    assert (params.num_leaves, params.num_rounds, params.feature_fraction) == (128, 400, 1.0)
    params.validate()


def test_values_of_clips_the_job_params_into_the_space():
    space = SearchSpace.parse("lambda_l2=0.001:10:log,num_leaves=8:16")
    assert space.values_of(TrainingParams(num_leaves=32)) == {"lambda_l2": 0.001, "num_leaves": 16}


@pytest.mark.parametrize("space, message", [
    ("num_leaves=64:8", "'num_leaves' has its lower bound 64 above its upper bound 8"),
    ("num_leafs=8:64", "'num_leafs' is not a hyperparameter the search can vary; searchable: learning_rate"),
    ("num_leaves=8", "'num_leaves=8' must be written num_leaves=low:high"),
    ("num_leaves=8:64:linear", "must be written num_leaves=low:high or num_leaves=low:high:log"),
    ("learning_rate=a:b", "the bounds must be numbers"),
    ("num_leaves=8.5:64", "'num_leaves' takes whole numbers, got 8.5:64"),
    ("lambda_l2=0:10:log", "log scale, so its lower bound must be above 0, got 0"),
    ("feature_fraction=0.5:1.5",
     "'feature_fraction' bound 1.5: feature_fraction must be a number in \\(0, 1\\]"),
    ("num_leaves=8:64,num_leaves=2:4", "'num_leaves' is searched twice"),
    (" , ", "names no hyperparameter"),
])
def test_a_bad_search_space_is_refused_at_parse_time_naming_the_parameter(space, message):
    with pytest.raises(ConfigError, match="parameter 'tuning_space': .*" + message):
        TrainingConfig(tuning_space=space)


def test_a_validation_slice_that_leaves_nothing_to_fit_on_is_refused():
    with pytest.raises(ConfigError, match="tuning_validation_fraction.*leave no time to fit on"):
        TrainingConfig(training_data_start_date="2016-01-01", training_data_end_date="2016-01-01",
                       tuning_validation_fraction=0.85, held_out_gap_minutes=300)


def test_the_tuning_split_ends_before_the_gap_and_the_held_out_rows():
    config = TrainingConfig()
    outer, inner = config.time_split(), config.tuning_split()
    assert inner.train_start == outer.train_start
    assert inner.held_out_end == outer.train_end <= outer.held_out_start
    assert inner.train_end < inner.held_out_start
    assert (inner.held_out_start - inner.train_end).total_seconds() == config.held_out_gap_minutes * 60
