import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)

from spt_trainable import LARS, SchedulerConfig, create_optimizer, create_scheduler
from spt_trainable.optimizers import check_optimizer, optimizer_class
from spt_trainable.schedulers import check_scheduler, scheduler_class


def params():
    return [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]


def sgd(lr=0.5):
    return torch.optim.SGD(params(), lr=lr)


# ----------------------------------------------------------------------------- optimizers

OPTIMIZERS = ["SGD", "AdamW", "Adam", "RMSprop", "LARS", "Adagrad"]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(OPTIMIZERS), st.floats(1e-5, 1.0), st.sampled_from([0.0, 1e-4, 0.05]))
def test_every_form_of_one_optimizer_builds_the_same_thing(name, lr, weight_decay):
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    cls = optimizer_class(name)
    forms = [
        {"type": name, **kwargs},
        {"type": name.lower(), **kwargs},
        {"type": cls, **kwargs},
        functools.partial(cls, **kwargs),
        lambda ps: cls(ps, **kwargs),
    ]
    built = [create_optimizer(params(), form) for form in forms]
    assert {type(o) for o in built} == {cls}
    groups = [{k: v for k, v in o.param_groups[0].items() if k != "params"} for o in built]
    assert all(g == groups[0] for g in groups)
    assert groups[0]["lr"] == lr and groups[0]["weight_decay"] == weight_decay


@pytest.mark.parametrize("form", ["SGD", "sgd", torch.optim.SGD])
def test_name_and_class_take_the_constructor_defaults(form):
    optimizer = create_optimizer(params(), form)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults == torch.optim.SGD(params()).defaults


def test_lars_is_found_by_name_with_its_defaults():
    optimizer = create_optimizer(params(), "LARS")
    assert type(optimizer) is LARS
    assert optimizer.defaults == {
        "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "eta": 1e-3, "eps": 1e-8,
        "clip_lr": False, "exclude_bias_n_norm": False, "nesterov": False, "dampening": 0.0,
    }  # fmt: skip


def test_an_optimizer_instance_is_returned_as_is():
    optimizer = sgd()
    assert create_optimizer(params(), optimizer) is optimizer


@pytest.mark.parametrize(
    ("form", "error", "match"),
    [
        ("Adamm", ValueError, r"optimizer='Adamm' is not a known optimizer; known: \[.*'AdamW'"),
        ({"lr": 0.1}, ValueError, "needs a 'type' key"),
        ({"type": 3}, TypeError, "must be a name or a class"),
        ({"type": StepLR}, TypeError, "must be an Optimizer class"),
        ({"type": "SGD", "rl": 0.1}, TypeError, r"SGD takes no argument\(s\) \['rl'\]"),
        (3.0, TypeError, "optimizer must be an optimizer name"),
        (lambda ps: "not an optimizer", TypeError, "not a torch.optim.Optimizer"),
    ],
)
def test_bad_optimizer_forms_say_what_is_allowed(form, error, match):
    with pytest.raises(error, match=match):
        create_optimizer(params(), form)


def test_check_optimizer_names_the_argument():
    with pytest.raises(TypeError, match="head_optimizer must be"):
        check_optimizer(1, argument="head_optimizer")


# ----------------------------------------------------------------------------- schedulers


def test_scheduler_forms_build_the_same_schedule():
    forms = [
        {"type": "StepLR", "step_size": 2, "gamma": 0.5},
        {"type": StepLR, "step_size": 2, "gamma": 0.5},
        functools.partial(StepLR, step_size=2, gamma=0.5),
        lambda opt: StepLR(opt, step_size=2, gamma=0.5),
        {"scheduler": functools.partial(StepLR, step_size=2, gamma=0.5)},
    ]
    for form in forms:
        optimizer = sgd(lr=1.0)
        config = create_scheduler(optimizer, form)
        assert isinstance(config, SchedulerConfig) and config.interval == "step"
        lrs = []
        for _ in range(5):
            optimizer.step()
            config.scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25], form


def test_name_and_class_use_defaults():
    config = create_scheduler(sgd(), "LinearLR")
    assert type(config.scheduler) is LinearLR and config.scheduler.total_iters == 5
    assert type(create_scheduler(sgd(), LinearLR).scheduler) is LinearLR


def test_a_scheduler_instance_must_drive_the_given_optimizer():
    optimizer = sgd()
    scheduler = StepLR(optimizer, step_size=1)
    assert create_scheduler(optimizer, scheduler).scheduler is scheduler
    with pytest.raises(ValueError, match="drives another optimizer"):
        create_scheduler(sgd(), scheduler)


def test_interval_and_monitor_options():
    config = create_scheduler(sgd(), {"type": "StepLR", "step_size": 3, "interval": "epoch"})
    assert (config.interval, config.monitor, config.strict) == ("epoch", None, True)
    plateau = create_scheduler(
        sgd(), {"type": "ReduceLROnPlateau", "monitor": "eval/acc", "strict": False}
    )
    assert type(plateau.scheduler) is ReduceLROnPlateau and plateau.needs_monitor
    assert (plateau.interval, plateau.monitor, plateau.strict) == ("epoch", "eval/acc", False)
    stepwise = create_scheduler(
        sgd(), {"scheduler": ReduceLROnPlateau, "monitor": "train/loss", "interval": "step"}
    )
    assert stepwise.interval == "step"


def test_horizon_fills_the_length_of_training():
    seen = []

    def horizon(interval):
        seen.append(interval)
        return 40 if interval == "step" else 4

    assert create_scheduler(sgd(), "CosineAnnealingLR", horizon).scheduler.T_max == 40
    epoch = create_scheduler(sgd(), {"type": CosineAnnealingLR, "interval": "epoch"}, horizon)
    assert epoch.scheduler.T_max == 4
    explicit = create_scheduler(sgd(), {"type": "CosineAnnealingLR", "T_max": 7}, horizon)
    assert explicit.scheduler.T_max == 7
    cycle = create_scheduler(sgd(lr=0.3), "OneCycleLR", horizon).scheduler
    assert type(cycle) is OneCycleLR and cycle.total_steps == 40
    assert seen == ["step", "epoch", "step"]
    create_scheduler(sgd(), "ConstantLR", horizon)
    assert len(seen) == 3  # asked only when needed
    with pytest.raises(ValueError, match="run's length is unknown"):
        create_scheduler(sgd(), "CosineAnnealingLR", lambda interval: None)
    with pytest.raises(ValueError, match="T_max"):
        create_scheduler(sgd(), "CosineAnnealingLR")


@pytest.mark.parametrize(
    ("form", "error", "match"),
    [
        ("Cosine", ValueError, "not a known learning-rate scheduler"),
        ("LambdaLR", TypeError, r"LambdaLR needs \['lr_lambda'\]"),
        ({"type": "StepLR", "step_size": 1, "interval": "batch"}, ValueError, "interval"),
        ({"type": "StepLR", "step_size": 1, "monitor": 3}, TypeError, "monitor"),
        ({"type": "StepLR", "step_size": 1, "strict": "yes"}, TypeError, "strict"),
        ("ReduceLROnPlateau", ValueError, "needs the logged value"),
        ({"scheduler": "StepLR", "step_size": 1}, ValueError, "takes only 'interval'"),
        ({"scheduler": {"type": "StepLR"}}, TypeError, "must not be a dict"),
        ({"type": torch.optim.SGD}, TypeError, "must be a scheduler class"),
        ({"type": "StepLR", "step": 1}, TypeError, "takes no argument"),
        (2, TypeError, "scheduler must be a scheduler name"),
    ],
)
def test_bad_scheduler_forms_are_refused_before_anything_is_built(form, error, match):
    with pytest.raises(error, match=match):
        check_scheduler(form)


def test_a_horizon_must_be_callable_and_return_a_number_of_steps():
    with pytest.raises(TypeError, match=r"scheduler: horizon must be callable\(interval\)"):
        create_scheduler(sgd(), "CosineAnnealingLR", 40)
    with pytest.raises(TypeError, match=r"scheduler: horizon\('step'\) must return an int or None"):
        create_scheduler(sgd(), "CosineAnnealingLR", lambda interval: "40")


def test_the_optimizer_to_schedule_and_the_parameters_to_optimize_are_named():
    with pytest.raises(TypeError, match=r"scheduler: optimizer must be a torch\.optim\.Optimizer"):
        create_scheduler(params(), "StepLR", lambda interval: 30)
    with pytest.raises(TypeError, match="optimizer: params must be an iterable of parameters"):
        create_optimizer(3, "SGD")


def test_callable_returning_no_scheduler_is_refused():
    with pytest.raises(TypeError, match="not a learning-rate scheduler"):
        create_scheduler(sgd(), lambda optimizer: optimizer)


def test_plateau_built_by_a_callable_still_needs_a_monitor():
    with pytest.raises(ValueError, match="needs the logged value"):
        create_scheduler(sgd(), lambda optimizer: ReduceLROnPlateau(optimizer))


def test_scheduler_lookup_is_case_insensitive():
    assert scheduler_class("steplr") is StepLR
