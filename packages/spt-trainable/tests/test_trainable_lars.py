import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_trainable import LARS
from spt_trainable.lars import lars_scale


def one_step(weight, grad, **kwargs):
    w = torch.nn.Parameter(torch.tensor(weight, dtype=torch.float64))
    optimizer = LARS([w], **kwargs)
    w.grad = torch.tensor(grad, dtype=torch.float64)
    optimizer.step()
    return w.detach().tolist()


# ----------------------------------------------------------------------------- by hand


def test_two_momentum_steps_computed_by_hand():
    # ||w0|| = 5, ||g1|| = 1: trust = 0.01 * 5 / 1 = 0.05, d1 = 0.05 * g1 = [0.03, 0.04],
    # buf = d1, w1 = w0 - 0.1 * d1 = [2.997, 3.996] (= 0.999 w0, so ||w1|| = 4.995).
    # ||g2|| = 2: trust = 0.01 * 4.995 / 2 = 0.024975, d2 = [0, 0.04995],
    # buf = 0.9 * [0.03, 0.04] + d2 = [0.027, 0.08595], w2 = w1 - 0.1 * buf.
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    optimizer = LARS([w], lr=0.1, momentum=0.9, eta=0.01, eps=0.0)
    w.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    optimizer.step()
    assert w.detach().tolist()[0] == pytest.approx([2.997, 3.996], abs=1e-12)
    w.grad = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    optimizer.step()
    assert w.detach().tolist()[0] == pytest.approx([2.9943, 3.987405], abs=1e-12)


def test_default_has_no_momentum_and_keeps_no_state():
    # ||w|| = 5, ||g|| = 1: trust = 1e-3 * 5 / 1 = 0.005; w = w - 0.1 * 0.005 * g, twice.
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    optimizer = LARS([w])
    for _ in range(2):
        w.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
        before = w.detach().clone()
        optimizer.step()
        trust = 1e-3 * before.norm() / (1.0 + 1e-8)
        torch.testing.assert_close(w.detach(), before - 0.1 * trust * w.grad, rtol=0, atol=1e-15)
    assert optimizer.state_dict()["state"] == {}


def test_weight_decay_and_clipping_by_hand():
    # trust = 0.01 * 5 / (1 + 0.1 * 5) = 1/30; clipped: min((1/30) / 0.1, 1) = 1/3;
    # d = (g + 0.1 w) / 3 = ([0.9, 1.2]) / 3 = [0.3, 0.4]; w = w - 0.1 d.
    got = one_step(
        [[3.0, 4.0]], [[0.6, 0.8]],
        lr=0.1, momentum=0.0, weight_decay=0.1, eta=0.01, eps=0.0, clip_lr=True,
    )  # fmt: skip
    assert got[0] == pytest.approx([2.97, 3.96], abs=1e-12)


def test_clipping_caps_the_layer_rate_at_lr():
    # trust = 1 * 5 / 1 = 5 > lr: the clipped factor is 1, i.e. plain SGD at lr.
    got = one_step([[3.0, 4.0]], [[0.6, 0.8]], lr=0.1, momentum=0.0, eta=1.0, clip_lr=True)
    assert got[0] == pytest.approx([2.94, 3.92], abs=1e-12)
    unclipped = one_step([[3.0, 4.0]], [[0.6, 0.8]], lr=0.1, momentum=0.0, eta=1.0, eps=0.0)
    assert unclipped[0] == pytest.approx([3.0 - 0.1 * 5 * 0.6, 4.0 - 0.1 * 5 * 0.8], abs=1e-12)


def test_excluded_bias_is_plain_sgd_without_weight_decay():
    kwargs = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.1, "eta": 0.01}
    got = one_step([1.0, -2.0], [0.5, 0.5], exclude_bias_n_norm=True, **kwargs)
    assert got == pytest.approx([0.95, -2.05], abs=1e-12)
    adapted = one_step([1.0, -2.0], [0.5, 0.5], exclude_bias_n_norm=False, **kwargs)
    assert adapted != pytest.approx(got, abs=1e-6)


def test_zero_weight_or_zero_gradient_falls_back_to_sgd():
    assert one_step([[0.0, 0.0]], [[1.0, -1.0]], lr=0.1, momentum=0.0, eta=0.01)[0] == (
        pytest.approx([-0.1, 0.1], abs=1e-12)
    )
    assert one_step([[3.0, 4.0]], [[0.0, 0.0]], lr=0.1, momentum=0.0)[0] == [3.0, 4.0]


def test_nesterov_adds_the_momentum_buffer_once_more():
    # First step: buf = d = 0.05 g; Nesterov direction d + 0.9 buf = 1.9 * 0.05 g.
    got = one_step(
        [[3.0, 4.0]], [[0.6, 0.8]], lr=0.1, momentum=0.9, eta=0.01, eps=0.0, nesterov=True
    )
    assert got[0] == pytest.approx([3.0 - 0.1 * 1.9 * 0.03, 4.0 - 0.1 * 1.9 * 0.04], abs=1e-12)


def test_parameters_without_gradient_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    optimizer = LARS([a, b], lr=0.1)
    a.grad = torch.ones(2, 2)
    optimizer.step()
    assert torch.equal(b, torch.ones(2)) and not torch.equal(a, torch.ones(2, 2))
    assert b not in optimizer.state


def test_closure_is_evaluated_with_gradients_enabled():
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0]]))
    optimizer = LARS([w], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 5.0
    assert not torch.equal(w, torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"eta": -0.1}, ValueError, "eta"),
        ({"momentum": -0.5}, ValueError, "momentum"),
        ({"eps": float("nan")}, ValueError, "eps"),
        ({"weight_decay": "x"}, TypeError, "weight_decay"),
        ({"lr": True}, TypeError, "lr"),
        ({"nesterov": True, "momentum": 0.0}, ValueError, "nesterov"),
        ({"nesterov": 1, "momentum": 0.9}, TypeError, "LARS: nesterov must be a bool, got 1"),
        ({"clip_lr": "yes"}, TypeError, "LARS: clip_lr must be a bool"),  # was truthy: clipped
        ({"exclude_bias_n_norm": 0}, TypeError, "LARS: exclude_bias_n_norm must be a bool"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        LARS([torch.nn.Parameter(torch.ones(1))], **kwargs)


@pytest.mark.parametrize("params", [3, torch.ones(2)], ids=["int", "one tensor"])
def test_params_that_are_no_iterable_of_parameters_are_named(params):
    with pytest.raises(TypeError, match="LARS: params must be an iterable of parameters"):
        LARS(params)


def test_scale_factor_is_a_tensor_and_needs_no_host_sync():
    w, g = torch.tensor(5.0), torch.tensor(1.0)
    scale = lars_scale(w, g, lr=0.1, eta=0.01, weight_decay=0.0, eps=0.0, clip_lr=True)
    assert isinstance(scale, torch.Tensor) and scale.item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- reference


def reference_lars(
    weights, grads_per_step, *, lr, momentum, weight_decay, eta, eps, clip_lr, exclude, nesterov
):
    """LARS in float64 Python lists; ``weights`` is a list of (flat values, ndim)."""
    current = [list(values) for values, _ in weights]
    buffers = [None] * len(weights)
    for grads in grads_per_step:
        for i, ((_, ndim), grad) in enumerate(zip(weights, grads, strict=True)):
            w = current[i]
            d = list(grad)
            if not (exclude and ndim <= 1):
                w_norm = math.sqrt(sum(v * v for v in w))
                g_norm = math.sqrt(sum(v * v for v in grad))
                factor = 1.0
                if w_norm > 0 and g_norm > 0:
                    factor = eta * w_norm / (g_norm + weight_decay * w_norm + eps)
                    if clip_lr:
                        factor = min(factor / lr, 1.0)
                d = [factor * (gv + weight_decay * wv) for gv, wv in zip(grad, w, strict=True)]
            if momentum:
                if buffers[i] is None:
                    buffers[i] = list(d)
                else:
                    buffers[i] = [momentum * b + dv for b, dv in zip(buffers[i], d, strict=True)]
                d = (
                    [dv + momentum * b for dv, b in zip(d, buffers[i], strict=True)]
                    if nesterov
                    else buffers[i]
                )
            current[i] = [wv - lr * dv for wv, dv in zip(w, d, strict=True)]
    return current


finite = st.floats(-3, 3, allow_nan=False)


@st.composite
def lars_problems(draw):
    shapes = draw(
        st.lists(st.sampled_from([(3,), (2, 3), (4,), (1, 2, 2)]), min_size=1, max_size=3)
    )
    steps = draw(st.integers(1, 3))

    def tensor_values(shape):
        n = math.prod(shape)
        return draw(st.lists(finite, min_size=n, max_size=n))

    weights = [(tensor_values(s), s) for s in shapes]
    grads = [[tensor_values(s) for s in shapes] for _ in range(steps)]
    momentum = draw(st.sampled_from([0.0, 0.9]))
    options = {
        "lr": draw(st.sampled_from([0.01, 0.1, 1.0])),
        "momentum": momentum,
        "weight_decay": draw(st.sampled_from([0.0, 1e-3, 0.1])),
        "eta": draw(st.sampled_from([1e-3, 0.02, 1.0])),
        "eps": draw(st.sampled_from([0.0, 1e-8])),
        "clip_lr": draw(st.booleans()),
        "exclude_bias_n_norm": draw(st.booleans()),
        "nesterov": momentum > 0 and draw(st.booleans()),
    }
    return weights, grads, options


@settings(max_examples=60, deadline=None)
@given(lars_problems())
def test_matches_a_float64_reference(problem):
    weights, grads, options = problem
    params = [
        torch.nn.Parameter(torch.tensor(values, dtype=torch.float64).reshape(shape))
        for values, shape in weights
    ]
    optimizer = LARS(params, **options)
    for step in grads:
        for p, (grad, (_, shape)) in zip(params, zip(step, weights, strict=True), strict=True):
            p.grad = torch.tensor(grad, dtype=torch.float64).reshape(shape)
        optimizer.step()
    expected = reference_lars(
        [(values, len(shape)) for values, shape in weights],
        grads,
        lr=options["lr"],
        momentum=options["momentum"],
        weight_decay=options["weight_decay"],
        eta=options["eta"],
        eps=options["eps"],
        clip_lr=options["clip_lr"],
        exclude=options["exclude_bias_n_norm"],
        nesterov=options["nesterov"],
    )
    for p, values in zip(params, expected, strict=True):
        assert p.detach().reshape(-1).tolist() == pytest.approx(values, rel=1e-9, abs=1e-12)
