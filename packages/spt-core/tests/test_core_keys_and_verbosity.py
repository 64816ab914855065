import pytest
import torch

from spt_core import SPTCallback, get_verbosity, lookup, set_verbosity


def test_lookup_prefers_outputs_and_falls_back_to_the_batch():
    assert lookup("z", {"z": 1}, {"z": 2}, owner="x") == 1
    assert lookup("y", torch.ones(1), {"y": 3}, owner="x") == 3
    assert lookup("y", None, {"y": 3}, owner="x") == 3


def test_a_key_that_is_not_a_string_is_a_type_error_naming_the_owner():
    """It was a ``KeyError`` saying the key was missing."""
    with pytest.raises(TypeError, match=r"OnlineKNN\[name=knn\]: key must be a string, got 3"):
        lookup(3, {3: 1}, None, owner="OnlineKNN[name=knn]")


def test_missing_key_names_the_owner_and_lists_keys():
    with pytest.raises(KeyError) as error:
        lookup("z", {"loss": 1}, [torch.ones(1)], owner="OnlineKNN[name=knn]")
    message = str(error.value)
    assert "OnlineKNN[name=knn]" in message
    assert "['loss']" in message
    assert "it is a list" in message


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("yes", True), ("0", False), ("", False)]
)
def test_environment_variable_sets_the_default(monkeypatch, raw, expected):
    monkeypatch.setenv("SPT_VERBOSE", raw)
    assert get_verbosity() is expected
    assert SPTCallback("c").verbose is expected
    assert SPTCallback("c", verbose=not expected).verbose is (not expected)


def test_set_verbosity_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("SPT_VERBOSE", "0")
    set_verbosity(True)
    try:
        assert SPTCallback("c").verbose is True
    finally:
        set_verbosity(None)
    with pytest.raises(TypeError, match="verbose"):
        set_verbosity("yes")


def test_unknown_environment_value_is_an_error(monkeypatch):
    monkeypatch.setenv("SPT_VERBOSE", "loud")
    with pytest.raises(ValueError, match="SPT_VERBOSE"):
        get_verbosity()


@pytest.mark.parametrize(("name", "error"), [("", ValueError), ("a/b", ValueError), (3, TypeError)])
def test_callback_names_are_validated(name, error):
    with pytest.raises(error, match="name"):
        SPTCallback(name)


def test_state_keys_keep_instances_apart():
    class Probe(SPTCallback):
        pass

    assert Probe("linear").state_key != Probe("mlp").state_key
    assert Probe("linear").state_key == "Probe[name=linear]"
