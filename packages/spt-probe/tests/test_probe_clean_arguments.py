"""OnlineProbe checks its clean_* arguments whether or not a clean_loader is given."""

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from spt_probe import OnlineProbe

ACCURACY = MulticlassAccuracy(3)
AN_OPTIMIZER = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)


@pytest.mark.parametrize("with_loader", [False, True], ids=["no-loader", "loader"])
@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("clean_every_n_epochs", 0, ValueError),
        ("clean_every_n_epochs", 1.0, TypeError),
        ("clean_epochs", 0, ValueError),
        ("clean_epochs", "10", TypeError),
        ("clean_batch_size", 0, ValueError),
        ("clean_batch_size", 8.0, TypeError),
        ("clean_seed", -1, ValueError),
        ("clean_seed", "a", TypeError),
        ("clean_embed", 3, TypeError),
        ("clean_optimizer", 3, TypeError),
        ("clean_optimizer", AN_OPTIMIZER, TypeError),
        ("clean_optimizer", "no-such-optimizer", ValueError),
    ],
)
def test_a_bad_clean_argument_raises_naming_the_probe_and_the_argument(
    with_loader, argument, value, error
):
    clean = {"clean_loader": [{"x": torch.ones(2, 6)}]} if with_loader else {}
    with pytest.raises(error, match=rf"OnlineProbe\[name=linear\]: {argument}"):
        OnlineProbe(
            name="linear", input="x", target="y", probe=nn.Linear(6, 3),
            metrics=ACCURACY, **clean, **{argument: value},
        )  # fmt: skip
