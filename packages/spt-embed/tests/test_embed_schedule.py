"""EvaluationSchedule: every n training epochs at a validation, always outside a fit."""

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lightning.pytorch.trainer.states import TrainerFn

from spt_embed import EvaluationSchedule


def trainer(epoch, fn=TrainerFn.FITTING, sanity=False):
    state = SimpleNamespace(fn=fn)
    return SimpleNamespace(sanity_checking=sanity, state=state, current_epoch=epoch)


def run(schedule, validated_epochs):
    due = []
    for epoch in validated_epochs:
        if schedule.due(trainer(epoch)):
            schedule.mark(trainer(epoch))
            due.append(epoch)
    return due


@given(
    every=st.integers(1, 4),
    validated=st.lists(st.integers(0, 30), unique=True).map(sorted),
)
def test_due_epochs_follow_a_greedy_reference(every, validated):
    expected, last = [], None
    for epoch in validated:
        if last is None or epoch - last >= every:
            expected.append(epoch)
            last = epoch
    assert run(EvaluationSchedule(every), validated) == expected


def test_several_validations_in_one_epoch_evaluate_once():
    schedule = EvaluationSchedule(1)
    assert run(schedule, [0, 0, 0, 1, 1]) == [0, 1]


def test_never_in_the_sanity_check_always_outside_a_fit():
    schedule = EvaluationSchedule(3)
    assert not schedule.due(trainer(0, sanity=True))
    assert run(schedule, [0]) == [0]
    for fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
        assert schedule.due(trainer(1, fn=fn))
        schedule.mark(trainer(1, fn=fn))
    assert schedule.last_epoch == 0  # evaluations outside a fit do not move the schedule


def test_a_resumed_schedule_continues_and_a_new_fit_starts_over():
    straight = EvaluationSchedule(2)
    first = EvaluationSchedule(2)
    assert run(first, range(3)) == [0, 2]
    resumed = EvaluationSchedule(2)
    resumed.load_state_dict(first.state_dict())
    assert run(resumed, range(3, 7)) == [4, 6]
    assert run(straight, range(7)) == [0, 2, 4, 6]
    resumed.reset()
    assert run(resumed, [0, 1]) == [0]


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (1.5, TypeError)])
def test_every_n_epochs_is_checked_and_named(value, error):
    with pytest.raises(error, match="clean_every_n_epochs"):
        EvaluationSchedule(value, "clean_every_n_epochs")
