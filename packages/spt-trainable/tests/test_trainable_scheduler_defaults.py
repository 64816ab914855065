"""Schedulers named alone get their required arguments from the run's length."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as schedulers

from spt_trainable import create_scheduler
from spt_trainable.scheduler_defaults import SCHEDULER_DEFAULTS
from spt_trainable.schedulers import _schedulers, check_scheduler

LR = 0.4


def sgd(*lrs):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs or (LR,)]
    return torch.optim.SGD(groups, momentum=0.9)


def lrs_over(config, steps):
    """The first group's learning rate used by each of ``steps`` optimizer steps."""
    optimizer = config.scheduler.optimizer
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        config.scheduler.step()
    return used


# The documented defaults (the table of spt_trainable.scheduler_defaults), for a run of n steps.
DOCUMENTED = {
    schedulers.CosineAnnealingLR: lambda n: {"T_max": n},
    schedulers.CosineAnnealingWarmRestarts: lambda n: {"T_0": math.ceil(n / 4)},
    schedulers.CyclicLR: lambda n: {"base_lr": [LR / 10], "max_lr": [LR]},
    schedulers.ExponentialLR: lambda n: {"gamma": 0.01 ** (1 / n)},
    schedulers.MultiStepLR: lambda n: {
        "milestones": sorted({math.ceil(n / 2), math.ceil(n * 3 / 4)})
    },
    schedulers.OneCycleLR: lambda n: {"total_steps": n, "max_lr": [LR]},
    schedulers.StepLR: lambda n: {"step_size": math.ceil(n / 3)},
}


def test_the_documented_table_covers_every_filled_scheduler():
    assert set(DOCUMENTED) == set(SCHEDULER_DEFAULTS)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(DOCUMENTED, key=lambda c: c.__name__)), st.integers(1, 400))
def test_name_class_and_bare_dict_give_the_documented_schedule(cls, n):
    """Each short form builds the schedule that spelling out the documented values builds."""
    explicit = create_scheduler(sgd(), {"type": cls, **DOCUMENTED[cls](n)})
    expected = lrs_over(explicit, min(n, 60))
    for form in (cls.__name__, cls, {"type": cls.__name__}, {"type": cls, "interval": "step"}):
        asked = []

        def horizon(interval, asked=asked):
            asked.append(interval)
            return n

        config = create_scheduler(sgd(), form, horizon=horizon)
        assert type(config.scheduler) is cls
        # Asked once, for the interval it is stepped at; CyclicLR's defaults need no length.
        assert asked == ([] if cls is schedulers.CyclicLR else ["step"])
        assert lrs_over(config, min(n, 60)) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300))
def test_step_lr_by_name_against_a_reference_formula(n):
    config = create_scheduler(sgd(), "StepLR", horizon=lambda interval: n)
    third = math.ceil(n / 3)
    assert lrs_over(config, n) == pytest.approx([LR * 0.1 ** (t // third) for t in range(n)])
    assert config.scheduler.step_size == third


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300))
def test_exponential_lr_by_name_ends_at_one_percent(n):
    config = create_scheduler(sgd(), "ExponentialLR", horizon=lambda interval: n)
    lrs_over(config, n)
    assert config.scheduler.get_last_lr()[0] == pytest.approx(LR / 100, rel=1e-9)


def test_epoch_interval_counts_epochs_and_explicit_arguments_win():
    horizon = {"step": 60, "epoch": 6}.get
    by_epoch = create_scheduler(sgd(), {"type": "StepLR", "interval": "epoch"}, horizon)
    assert by_epoch.scheduler.step_size == 2 and by_epoch.interval == "epoch"
    asked = []
    explicit = create_scheduler(
        sgd(), {"type": "StepLR", "step_size": 7}, lambda interval: asked.append(interval)
    )
    assert explicit.scheduler.step_size == 7 and asked == []
    gamma = create_scheduler(sgd(), {"type": "StepLR", "gamma": 0.5}, horizon).scheduler
    assert (gamma.step_size, gamma.gamma) == (20, 0.5)


def test_learning_rates_follow_each_parameter_group():
    cycle = create_scheduler(sgd(0.2, 0.6), "CyclicLR", lambda interval: 10).scheduler
    assert cycle.base_lrs == pytest.approx([0.02, 0.06])
    assert cycle.max_lrs == pytest.approx([0.2, 0.6])
    one = create_scheduler(sgd(0.2, 0.6), "OneCycleLR", lambda interval: 10).scheduler
    assert [group["max_lr"] for group in one.optimizer.param_groups] == [0.2, 0.6]


def test_one_cycle_given_epochs_is_not_given_total_steps():
    config = create_scheduler(
        sgd(), {"type": "OneCycleLR", "epochs": 2, "steps_per_epoch": 5}, lambda interval: 999
    )
    assert config.scheduler.total_steps == 10


def test_a_short_run_still_gets_valid_arguments():
    assert create_scheduler(sgd(), "StepLR", lambda i: 1).scheduler.step_size == 1
    assert create_scheduler(sgd(), "MultiStepLR", lambda i: 1).scheduler.milestones == {1: 1}
    assert create_scheduler(sgd(), "CosineAnnealingWarmRestarts", lambda i: 1).scheduler.T_0 == 1


@pytest.mark.parametrize("horizon", [None, lambda interval: None, lambda interval: math.inf])
def test_an_unknown_run_length_names_what_to_pass(horizon):
    with pytest.raises(ValueError, match=r"StepLR needs \['step_size'\] and the run's length"):
        create_scheduler(sgd(), "StepLR", horizon)


# Schedulers whose required arguments (functions, other schedulers) have no sensible default.
NO_DEFAULT = {
    "ChainedScheduler": "'schedulers'",
    "LambdaLR": "'lr_lambda'",
    "MultiplicativeLR": "'lr_lambda'",
    "SequentialLR": "'schedulers', 'milestones'",
}


@pytest.mark.parametrize("name", sorted(set(_schedulers()) - {"ReduceLROnPlateau"}))
def test_every_scheduler_name_builds_alone_or_says_what_it_needs(name):
    """check_scheduler's verdict at construction is what building it does at fit start."""
    if name in NO_DEFAULT:
        for attempt in (check_scheduler, lambda form: create_scheduler(sgd(), form, lambda i: 12)):
            with pytest.raises(TypeError, match=rf"scheduler: {name} needs \[{NO_DEFAULT[name]}"):
                attempt(name)
        return
    check_scheduler(name)
    config = create_scheduler(sgd(), name, lambda interval: 12)
    assert type(config.scheduler).__name__ == name
    lrs_over(config, 12)
