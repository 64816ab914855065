"""Where LatentViz's maps go: the ``.npz`` and ``.png`` files, image loggers, the W&B table."""

from __future__ import annotations

import glob
import os
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from spt_core import SPTCallback, distributed
from spt_latentviz import plotting
from spt_latentviz._checks import unwritable_reason
from spt_latentviz.animation import save_animation


class MapOutputs(SPTCallback):
    """The output side of :class:`~spt_latentviz.LatentViz`: rank 0 writes each map to
    ``save_dir`` and sends it to the Trainer's loggers. A logger's failure warns once and never
    stops training."""

    save_dir: str | os.PathLike[str] | None
    target: str | None
    k_neighbors: int
    _hinted_plot_extra: bool = False

    def map_folder(self, trainer: Trainer) -> str:
        """``save_dir``, or ``{trainer.default_root_dir}/latent_viz_{name}`` without one."""
        if self.save_dir is not None:
            return os.fspath(self.save_dir)
        return os.path.join(trainer.default_root_dir, f"latent_viz_{self.name}")

    def _check_folder(self, trainer: Trainer) -> None:
        """Create the folder on rank 0 and fail on every rank when it cannot be written."""
        folder = self.map_folder(trainer)
        reason = unwritable_reason(folder) if trainer.is_global_zero else None
        failed = torch.tensor([float(reason is not None)], device=trainer.strategy.root_device)
        distributed.broadcast_([failed])
        if failed.item():
            raise ValueError(
                f"{self.state_key}: save_dir {folder!r} is not a folder rank 0 can write "
                f"to ({reason or 'see rank 0'}); pass another save_dir"
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        if trainer.is_global_zero:
            self._write_animation(trainer)

    def _write_animation(self, trainer: Trainer) -> None:
        """``maps.gif``: every ``epoch_XXXX.npz`` of the folder, in order (rank 0, with
        matplotlib)."""
        folder = self.map_folder(trainer)
        frames = sorted(glob.glob(os.path.join(glob.escape(folder), "epoch_[0-9]*.npz")))
        if not frames or not plotting.has_matplotlib():
            return
        path = os.path.join(folder, "maps.gif")
        try:
            count = save_animation(frames, path, self.name)
        except Exception as error:  # a picture must not fail the fit at its very end
            self.warn_once(trainer, "animation", f"could not write {path}: {error!r}")
            return
        self.info(f"wrote the animation of {count} map(s) to {path}")

    def _write(
        self,
        trainer: Trainer,
        epoch: int,
        z: Tensor,
        labels: Tensor | None,
        scores: dict[str, Tensor],
    ) -> None:
        folder = self.map_folder(trainer)
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f"epoch_{epoch:04d}")
        values = {key: float(v) for key, v in scores.items()}  # one sync per plot
        coordinates = z.cpu().numpy()
        classes = None
        if labels is not None:
            if labels.numel() == len(coordinates):
                classes = labels.reshape(-1).cpu().numpy()
            else:
                self.warn_once(
                    trainer, "labels", f"'{self.target}' is not one label per row: one colour"
                )
        plotting.save_map(stem + ".npz", coordinates, classes, epoch=epoch, **values)
        self._log_table(trainer, epoch, coordinates, classes)
        if not plotting.has_matplotlib():
            if not self._hinted_plot_extra:
                self._hinted_plot_extra = True
                self.info(f"saved {stem}.npz; {plotting.PLOT_EXTRA_HINT}")
            return
        k = self.k_neighbors
        title = (
            f"{self.name}, epoch {epoch}: trustworthiness@{k} {values['trustworthiness']:.3f}, "
            f"kNN recall@{k} {values['knn_recall']:.3f} ({len(coordinates)} points)"
        )
        figure = plotting.draw_map(coordinates, classes, title)
        plotting.save_figure(figure, stem + ".png")
        self.debug(f"saved {stem}.png")
        self._log_image(trainer, figure)

    def _log_image(self, trainer: Trainer, figure: Any) -> None:
        tag = f"eval/{self.name}_map"
        image = None
        for logger in trainer.loggers:
            try:
                if callable(getattr(logger, "log_image", None)):
                    image = plotting.figure_to_rgb(figure) if image is None else image
                    logger.log_image(key=tag, images=[image], step=trainer.global_step)
                    continue
                experiment = getattr(logger, "experiment", None)
                if callable(getattr(experiment, "add_image", None)):
                    image = plotting.figure_to_rgb(figure) if image is None else image
                    experiment.add_image(tag, image, trainer.global_step, dataformats="HWC")
            except Exception as error:  # a logger's failure must not stop training
                self.warn_once(
                    trainer, f"image-{type(logger).__name__}", f"could not log the map: {error!r}"
                )

    def _log_table(
        self, trainer: Trainer, epoch: int, coordinates: Any, classes: Any | None
    ) -> None:
        """Log the seed's W&B table of the map and the epoch to every ``WandbLogger``."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        columns, rows = plotting.table_data(coordinates, classes)
        for logger in loggers:
            try:
                logger.experiment.log(
                    {
                        f"{self.name}/2d_latent_table": wandb.Table(columns=columns, data=rows),
                        f"{self.name}/current_epoch": epoch,
                        "trainer/global_step": trainer.global_step,
                    }
                )
            except Exception as error:  # a logger's failure must not stop training
                self.warn_once(trainer, "wandb-table", f"could not log the table: {error!r}")
