"""Issue #14: a map that keeps up with a backbone that is still learning (digits, SimCLR MLP)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from spt_core.testing import DictDataset, quiet_trainer
from spt_latentviz import LatentViz, projection_mlp, trustworthiness


class SimCLR(nn.Module):
    """An MLP encoder trained with NT-Xent on two noisy, masked views of each digit."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Linear(128, 64)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        views = [
            (rows + 0.5 * torch.randn_like(rows)) * (torch.rand_like(rows) > 0.3) for _ in "ab"
        ]
        z = F.normalize(self.head(self.encoder(torch.cat(views))), dim=1)
        logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
        n = len(rows)
        return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def simclr_module():
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = SimCLR()

        def training_step(self, batch: dict, batch_idx: int) -> dict:
            embedding = self.net.encoder(batch["x"])
            return {"loss": self.net.loss(batch["x"]), "embedding": embedding}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=2e-3)

    return Module()


def test_the_default_map_of_a_learning_backbone_is_as_trustworthy_as_umap(tmp_path):
    umap = pytest.importorskip("umap")
    datasets = pytest.importorskip("sklearn.datasets")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    digits = datasets.load_digits()
    x = torch.tensor(preprocessing.StandardScaler().fit_transform(digits.data), dtype=torch.float32)
    torch.manual_seed(0)
    viz = LatentViz("digits", "embedding", "label", projection_mlp(128), save_dir=tmp_path)
    model = simclr_module()
    data = DictDataset(x=x, label=torch.tensor(digits.target))
    # 20 epochs of 12 batches: the map is drawn at epochs 0 and 10 and trained online between.
    trainer = quiet_trainer(max_epochs=20, callbacks=[viz], default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=150, shuffle=True))
    with torch.no_grad():
        final = model.net.encoder(x)
    ours = trustworthiness(final, viz.project(final), viz.k_neighbors).item()
    reference = umap.UMAP(n_neighbors=viz.k_neighbors, random_state=0).fit_transform(final.numpy())
    theirs = trustworthiness(final, torch.from_numpy(reference), viz.k_neighbors).item()
    assert ours >= theirs - 0.03, (ours, theirs)
