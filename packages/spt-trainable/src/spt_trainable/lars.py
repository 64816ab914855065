"""LARS: SGD with a layer-wise learning rate scaled by the ratio of weight to gradient norm."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from spt_trainable._forms import check_params


def lars_scale(
    weight_norm: Tensor,
    grad_norm: Tensor,
    *,
    lr: float,
    eta: float,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    clip_lr: bool = False,
) -> Tensor:
    """The factor LARS multiplies one layer's update direction by.

    The trust ratio is ``eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)``. With
    ``clip_lr`` the layer's effective learning rate ``lr * factor`` never exceeds ``lr``:
    the factor becomes ``min(trust / lr, 1)``. When either norm is zero the factor is 1
    (plain SGD for that step). Everything stays a tensor: no host synchronisation.

    Args:
        weight_norm: ``||w||`` of the layer, a scalar tensor.
        grad_norm: ``||g||`` of its gradient, a scalar tensor.
        lr: The group's learning rate.
        eta: LARS coefficient.
        weight_decay: L2 coefficient folded into the update direction.
        eps: Added to the denominator.
        clip_lr: Clip the layer's effective learning rate at ``lr``.

    Returns:
        The scalar factor, a tensor with ``weight_norm``'s dtype and device.

    Example:
        >>> lars_scale(torch.tensor(5.0), torch.tensor(1.0), lr=0.1, eta=0.01, eps=0.0)
        tensor(0.0500)
        >>> lars_scale(torch.tensor(5.0), torch.tensor(1.0), lr=0.1, eta=0.01, eps=0.0,
        ...            clip_lr=True)
        tensor(0.5000)
        >>> lars_scale(torch.tensor(0.0), torch.tensor(1.0), lr=0.1, eta=0.01)
        tensor(1.)
    """
    trust = eta * weight_norm / (grad_norm + weight_decay * weight_norm + eps)
    if clip_lr:
        trust = torch.clamp(trust / lr, max=1.0)
    usable = (weight_norm > 0) & (grad_norm > 0)
    return torch.where(usable, trust, torch.ones_like(trust))


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman and Ginsburg, 2017) on top of momentum SGD.

    For every parameter tensor ``w`` with gradient ``g`` (a "layer"):

    - adapted layers: ``d = lars_scale(||w||, ||g||) * (g + weight_decay * w)``;
    - layers excluded by ``exclude_bias_n_norm`` (tensors with at most one dimension:
      biases and normalisation scales): ``d = g``, with no weight decay and no scaling;
    - then momentum SGD: ``buf = momentum * buf + (1 - dampening) * d`` (``buf = d`` on the
      first step), ``d = d + momentum * buf`` with Nesterov else ``d = buf``, and
      ``w = w - lr * d``. With ``momentum=0`` (the default) no buffer is kept: ``w = w - lr * d``.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate (default 0.1).
        momentum: Momentum factor (default 0, as ``torch.optim.SGD``: no momentum buffer).
        weight_decay: L2 coefficient, adapted layers only (default 0).
        eta: LARS coefficient (default 1e-3).
        eps: Added to the trust ratio's denominator (default 1e-8).
        clip_lr: Cap every layer's effective learning rate at ``lr``, LARC's clipping
            (default ``False``).
        exclude_bias_n_norm: Leave 0-d and 1-d tensors out of adaptation and weight decay
            (default ``False``).
        nesterov: Nesterov momentum (default ``False``).
        dampening: Dampening of the momentum buffer (default 0).

    Raises:
        TypeError: If ``params`` is not an iterable of parameters or groups, ``lr``,
            ``momentum``, ``weight_decay``, ``eta``, ``eps`` or ``dampening`` is not a number,
            or ``clip_lr``, ``exclude_bias_n_norm`` or ``nesterov`` not a bool.
        ValueError: If one of those numbers is negative or NaN (as ``torch.optim.SGD``
            refuses a negative ``lr``), or for Nesterov without momentum or with dampening.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]).reshape(1, 2))
        >>> opt = LARS([w], lr=0.1, momentum=0.0, eta=0.01, eps=0.0, clip_lr=True)
        >>> w.grad = torch.tensor([[0.6, 0.8]])
        >>> opt.step()
        >>> w.data
        tensor([[2.9700, 3.9600]])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        eps: float = 1e-8,
        clip_lr: bool = False,
        exclude_bias_n_norm: bool = False,
        nesterov: bool = False,
        dampening: float = 0.0,
    ) -> None:
        for arg, value in {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "eps": eps,
            "dampening": dampening,
        }.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"LARS: {arg} must be a number >= 0, got {value!r}")
            if not value >= 0:
                raise ValueError(f"LARS: {arg} must be a number >= 0, got {value!r}")
        flags = {"clip_lr": clip_lr, "exclude_bias_n_norm": exclude_bias_n_norm}
        for arg, value in {**flags, "nesterov": nesterov}.items():
            if not isinstance(value, bool):
                raise TypeError(f"LARS: {arg} must be a bool, got {value!r}")
        check_params(params, "LARS: params")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"LARS: nesterov needs momentum > 0 and dampening 0, "
                f"got momentum={momentum!r}, dampening={dampening!r}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "eps": eps,
            "clip_lr": clip_lr,
            "exclude_bias_n_norm": exclude_bias_n_norm,
            "nesterov": nesterov,
            "dampening": dampening,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one update; ``closure`` re-evaluates the loss as in ``torch.optim``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        if not (group["exclude_bias_n_norm"] and p.ndim <= 1):
            weight_decay = group["weight_decay"]
            scale = lars_scale(
                torch.linalg.vector_norm(p),
                torch.linalg.vector_norm(grad),
                lr=group["lr"],
                eta=group["eta"],
                weight_decay=weight_decay,
                eps=group["eps"],
                clip_lr=group["clip_lr"],
            )
            grad = grad.add(p, alpha=weight_decay) if weight_decay else grad
            grad = grad * scale
        momentum = group["momentum"]
        if momentum:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(grad, alpha=-group["lr"])
