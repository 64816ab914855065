"""How an :class:`~spt_probe.OnlineProbe` reads its inputs and writes its predictions."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from torch import Tensor

from spt_core import lookup
from spt_probe.functional import check_targets, masked_cross_entropy, prepare_features

__all__ = ["ProbeInputs"]


class ProbeInputs:
    """The features, targets and ``{name}_preds`` of an :class:`~spt_probe.OnlineProbe` (a
    mixin: it reads ``input``, ``target``, ``loss_fn``, ``module`` and ``_metrics``)."""

    def _features(self, outputs: Any, batch: Any) -> Tensor:
        raw = lookup(self.input, outputs, batch, owner=self.state_key)
        if not isinstance(raw, Tensor):
            raise TypeError(
                f"{self.state_key}: '{self.input}' holds a {type(raw).__name__}, not a tensor "
                "of features"
            )
        features = prepare_features(raw, self.module)
        self.check_input_width(features, self.input)
        return features

    def _target(self, outputs: Any, batch: Any, features: Tensor, stage: str) -> Tensor:
        target = check_targets(
            lookup(self.target, outputs, batch, owner=self.state_key),
            features.shape[0],
            default_loss=self.loss_fn is masked_cross_entropy,
            name=self._metrics.targets_named(stage),
            rows_of=f"'{self.input}'",
        )
        return target.detach().to(features.device)

    def _publish(self, batch: Any, preds: Tensor) -> None:
        if isinstance(batch, MutableMapping):
            batch[f"{self.name}_preds"] = preds
