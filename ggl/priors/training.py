"""WGAN-GP training of a DCGAN prior as a LightningModule, so the project makes its own priors.

Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017 (arXiv 1704.00028), with GGL's settings
(arXiv 2203.15696): Adam lr 1e-4, betas (0.5, 0.999), 5 critic steps per generator step, penalty weight 10.
Each training batch is one critic step; every ``critic_steps``-th batch also takes a generator step. An exponential
moving average of the generator's weights is kept and is what gets saved (it gives visibly cleaner samples).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ggl.io import atomic_write, atomic_write_with, pretty_json
from ggl.priors.dcgan import DCGANConfig, DCGANCritic, DCGANGenerator

CHECKPOINT_FORMAT = "ggl-dcgan-v1"


class WGANGP(pl.LightningModule):
    """Trains ``DCGANGenerator`` against ``DCGANCritic`` with the WGAN-GP objective.

    Args:
        config: the architecture (``DCGANConfig``).
        lr, betas: Adam settings for both networks. critic_steps: critic updates per generator update.
        penalty: gradient-penalty weight. ema_decay: decay of the generator weight average (0 disables it).
        generator_steps: stop after this many generator steps. sample_every: generator steps between image grids.
    """

    completed_generator_steps: torch.Tensor

    def __init__(
        self,
        config: DCGANConfig,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        critic_steps: int = 5,
        penalty: float = 10.0,
        ema_decay: float = 0.999,
        generator_steps: int = 10_000,
        sample_every: int = 250,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "config": config.to_dict(),
                "lr": lr,
                "betas": list(betas),
                "critic_steps": critic_steps,
                "penalty": penalty,
                "ema_decay": ema_decay,
                "generator_steps": generator_steps,
            }
        )
        self.automatic_optimization = False
        self.config = config
        self.generator = DCGANGenerator(config)
        self.critic = DCGANCritic(config)
        self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False)
        self.lr, self.betas = lr, betas
        self.critic_steps, self.penalty, self.ema_decay = critic_steps, penalty, ema_decay
        self.generator_steps, self.sample_every = generator_steps, sample_every
        self.register_buffer("completed_generator_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer(
            "fixed_latents", torch.randn(64, config.latent_dim, generator=torch.Generator().manual_seed(0))
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas),
            torch.optim.Adam(self.critic.parameters(), lr=self.lr, betas=self.betas),
        ]

    def _labels(self, real_labels: torch.Tensor) -> torch.Tensor | None:
        return real_labels if self.config.num_classes else None

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        blended = (mix * real + (1 - mix) * fake).requires_grad_(True)
        scores = self.critic(blended, labels)
        (gradients,) = torch.autograd.grad(scores.sum(), blended, create_graph=True)
        return ((gradients.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        real, real_labels = batch
        labels = self._labels(real_labels)
        generator_optimizer, critic_optimizer = self.optimizers()  # type: ignore[misc, attr-defined]
        latents = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        with torch.no_grad():
            fake = self.generator(latents, labels)
        wasserstein = self.critic(real, labels).mean() - self.critic(fake, labels).mean()
        penalty = self._gradient_penalty(real, fake, labels)
        critic_loss = -wasserstein + self.penalty * penalty
        critic_optimizer.zero_grad()
        self.manual_backward(critic_loss)
        critic_optimizer.step()
        self.log_dict({"critic/wasserstein": wasserstein.detach(), "critic/penalty": penalty.detach()}, prog_bar=True)
        if (batch_index + 1) % self.critic_steps:
            return
        fake = self.generator(torch.randn_like(latents), labels)
        generator_loss = -self.critic(fake, labels).mean()
        generator_optimizer.zero_grad()
        self.manual_backward(generator_loss)
        generator_optimizer.step()
        self._update_ema()
        self.completed_generator_steps.add_(1)
        steps = int(self.completed_generator_steps)
        self.log("generator/loss", generator_loss.detach(), prog_bar=True)
        if steps % self.sample_every == 0:
            self._log_samples(steps)
        if steps >= self.generator_steps:
            self.trainer.should_stop = True

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.ema_decay if self.ema_decay > 0 else 0.0
        for averaged, current in zip(self.ema_generator.parameters(), self.generator.parameters()):
            averaged.lerp_(current, 1 - decay)
        for averaged_buffer, current_buffer in zip(self.ema_generator.buffers(), self.generator.buffers()):
            averaged_buffer.copy_(current_buffer)

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """Images of the averaged generator on fixed latents (labels cycle through the classes)."""
        from torchvision.utils import make_grid

        labels = None
        if self.config.num_classes:
            labels = torch.arange(64, device=self.device) % self.config.num_classes
        self.ema_generator.eval()
        images = self.ema_generator(self.fixed_latents, labels)
        return make_grid(images, nrow=8 if not self.config.num_classes else self.config.num_classes)

    def _log_samples(self, step: int) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image("samples", self.sample_grid(), step)

    def prior_checkpoint(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The averaged generator as a ``weights_only``-loadable dict (see ``save_prior``)."""
        generator = self.ema_generator if self.ema_decay > 0 else self.generator
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()},
            "training": {
                **dict(self.hparams),
                "completed_generator_steps": int(self.completed_generator_steps),
                **(extra or {}),
            },
        }


def save_prior(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write a prior checkpoint atomically (temporary file + rename) and a readable ``.json`` of its metadata."""
    path = Path(path)
    atomic_write_with(path, lambda partial: torch.save(checkpoint, partial))
    meta = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    atomic_write(path.with_suffix(".json"), pretty_json(meta))
    return path


class SavePrior(pl.Callback):
    """Saves the prior atomically every ``every`` generator steps and at the end of training."""

    def __init__(self, path: str | Path, every: int = 500, extra: dict[str, Any] | None = None) -> None:
        self.path, self.every, self.extra = Path(path), every, extra or {}
        self._last_saved = -1

    def _save(self, module: WGANGP) -> None:
        steps = int(module.completed_generator_steps)
        if steps != self._last_saved:
            save_prior(module.prior_checkpoint(self.extra), self.path)
            self._last_saved = steps

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        assert isinstance(module, WGANGP)
        steps = int(module.completed_generator_steps)
        if steps and steps % self.every == 0:
            self._save(module)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        assert isinstance(module, WGANGP)
        self._save(module)
