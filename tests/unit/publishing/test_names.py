"""Container names and prefixes are checked before anything touches storage."""
import pytest

from mlops.errors import ConfigError
from mlops.publishing import validate_container_name, validate_prefix


@pytest.mark.parametrize("name", ["abc", "taxi-fares-2016", "a1b", "x" * 63, "0-9"])
def test_valid_container_names_are_returned_unchanged(name):
    assert validate_container_name(name) == name


@pytest.mark.parametrize("name, rule", [
    ("ab", "3 to 63 characters long, got 2"),
    ("x" * 64, "3 to 63 characters long, got 64"),
    ("", "3 to 63 characters long, got 0"),
    ("Taxi", "only lowercase letters, digits and hyphens are allowed, found 'T'"),
    ("taxi_fares", "only lowercase letters, digits and hyphens are allowed, found '_'"),
    ("taxi.fares/x", "found '.', '/'"),
    ("-taxi", "must start and end with a letter or digit"),
    ("taxi-", "must start and end with a letter or digit"),
    ("taxi--fares", "must not contain consecutive hyphens"),
])
def test_invalid_container_name_message_quotes_name_and_rule(name, rule):
    with pytest.raises(ConfigError) as caught:
        validate_container_name(name)
    message = str(caught.value)
    assert f"container name '{name}' is invalid" in message
    assert rule in message


def test_container_name_must_be_a_string():
    with pytest.raises(ConfigError, match="container name must be a string, got int"):
        validate_container_name(123)


@pytest.mark.parametrize("prefix", ["scores", "scores/daily", "a.b/c-d_e", "x" * 255])
def test_valid_prefixes_are_returned_unchanged(prefix):
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix, rule", [
    ("scores/../secrets", "must not contain '..' or '.' segments"),
    ("..", "must not contain '..' or '.' segments"),
    ("scores/./daily", "must not contain '..' or '.' segments"),
    ("/scores", "must not start with '/'"),
    ("scores\\daily", "must not contain a backslash"),
    ("scores//daily", "must not contain empty segments"),
    ("scores/", "must not contain empty segments"),
    ("scores/" + "y" * 256, "is 256 characters long, the limit is 255"),
])
def test_invalid_prefix_message_quotes_prefix_and_rule(prefix, rule):
    with pytest.raises(ConfigError) as caught:
        validate_prefix(prefix)
    message = str(caught.value)
    assert "is invalid" in message
    assert rule in message
    if len(prefix) < 100:
        assert f"'{prefix}'" in message


@pytest.mark.parametrize("prefix", ["", None])
def test_empty_prefix_is_rejected(prefix):
    with pytest.raises(ConfigError, match="it must be a non-empty string"):
        validate_prefix(prefix)
