"""embed_loader and gather_in_loader_order on two gloo processes, through spt_core's
CallbackTester: together the ranks embed every clean row once, and the gathered rows come back
in the loader's order, as one process embeds them."""

import functools

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from spt_core.testing import Backbone, CallbackTester, DictDataset
from spt_embed import embed_loader, gather_in_loader_order

CLEAN = DictDataset(x=torch.arange(40.0).reshape(20, 2), label=torch.arange(20) % 3)


class LogLoaderOrder(Callback):
    """Embeds the clean loader at each validation epoch end and logs order-sensitive sums of
    every rank's rows: their count, sum(position * row) and sum(position * label)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def on_validation_epoch_end(self, trainer, pl_module):
        loader = DataLoader(CLEAN, batch_size=self.batch_size)
        features, labels = gather_in_loader_order(
            *embed_loader(
                pl_module, loader, input="embedding", target="label", owner="test", with_index=True
            )
        )
        position = torch.arange(len(labels), dtype=torch.float32)
        pl_module.log("rows", float(len(labels)))
        pl_module.log("weighted_rows", (position[:, None] * features).sum())
        pl_module.log("weighted_labels", (position * labels).sum())


def expected() -> dict[str, torch.Tensor]:
    position = torch.arange(20, dtype=torch.float32)
    return {
        "rows": torch.tensor(20.0),
        "weighted_rows": (position[:, None] * CLEAN.columns["x"]).sum(),
        "weighted_labels": (position * CLEAN.columns["label"]).sum(),
    }


def make_tester(batch_size: int) -> CallbackTester:
    make = functools.partial(LogLoaderOrder, batch_size=batch_size)
    return CallbackTester(make, functools.partial(Backbone, dim=2), val=CLEAN, batch_size=2)


def test_one_process_keeps_the_loaders_order():
    checker = make_tester(batch_size=3)
    checker.assert_logged(checker.run(stage="validate"), expected(), atol=0, rtol=0)


@pytest.mark.ddp
@pytest.mark.parametrize("batch_size", [3, 20], ids=["batches-alternate", "rank-1-has-none"])
def test_two_ranks_gather_every_row_once_in_the_loaders_order(batch_size):
    checker = make_tester(batch_size)
    checker.assert_logged(checker.run_ddp(stage="validate"), expected(), atol=0, rtol=0)
