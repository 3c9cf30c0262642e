"""Train a WGAN-GP generative prior on a datamodule's *public* split.

    python -m benchmarks.train_prior --data fashion-mnist --out ggl/priors/assets/fashion_mnist_wgan.pt

Writes the averaged generator atomically every ``--save-every`` generator steps (so a stopped run keeps its last
checkpoint), a ``.json`` with the exact config beside it, TensorBoard sample grids under ``--log-dir``, and a
Lightning checkpoint (``--resume`` continues from it).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from .cli import HelpFormatter
from .config import MAX_SEED, output_file, output_folder

DATA_CHOICES = ("fashion-mnist", "celeba")
POSITIVE_INTS = ("latent_dim", "width", "generator_steps", "batch_size", "critic_steps", "save_every")
"""Integer options that must be at least 1."""


def build_parser() -> argparse.ArgumentParser:
    """The command line (every WGAN-GP setting has a flag; defaults are GGL's)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.train_prior",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data", choices=DATA_CHOICES, required=True, help="public split to train on")
    parser.add_argument("--data-root", default=None, help="dataset root (torchvision layout)")
    parser.add_argument("--out", required=True, help="path of the prior checkpoint (.pt)")
    parser.add_argument("--image-size", type=int, default=32, help="square image side (power of two, 8 to 1024)")
    parser.add_argument("--latent-dim", type=int, default=128, help="latent vector size")
    parser.add_argument("--width", type=int, default=32, help="base channel count of both networks")
    parser.add_argument("--unconditional", action="store_true", help="ignore labels (GGL's CelebA prior)")
    parser.add_argument("--generator-steps", type=int, default=10_000, help="generator updates to train")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of both networks")
    parser.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
    parser.add_argument("--beta2", type=float, default=0.999, help="Adam beta2")
    parser.add_argument("--critic-steps", type=int, default=5, help="critic updates per generator update")
    parser.add_argument("--penalty", type=float, default=10.0, help="gradient-penalty weight")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="decay of the generator's moving average")
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop (and save) after this wall time (default: no limit)"
    )
    parser.add_argument("--save-every", type=int, default=250, help="generator steps between saved checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="seed of data order, initialisation and sampling")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu or gpu")
    parser.add_argument("--log-dir", default=None, help="TensorBoard/Lightning directory (default: beside --out)")
    parser.add_argument("--resume", action="store_true", help="continue from the Lightning checkpoint beside --out")
    return parser


def _datamodule(args: argparse.Namespace) -> Any:
    """The datamodule whose public split the prior learns."""
    from ggl.data import make_datamodule

    name = "embedded" if args.data == "fashion-mnist" else "celeba"
    options = {
        "data_root": args.data_root,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    return make_datamodule(name, **options)


def check_args(args: argparse.Namespace) -> None:
    """Every option checked before torch is imported or any step trained; ``ValueError`` naming the option."""
    if args.data == "celeba" and args.data_root is None:
        raise ValueError("--data celeba needs --data-root (the folder holding celeba/)")
    for option in POSITIVE_INTS:
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if not 8 <= args.image_size <= 1024 or args.image_size & (args.image_size - 1):
        raise ValueError(f"--image-size must be a power of two from 8 to 1024, got {args.image_size}")
    for option, value in (("lr", args.lr), ("penalty", args.penalty), ("max_minutes", args.max_minutes)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{option.replace('_', '-')} must be a positive number, got {value}")
    for option, value in (("beta1", args.beta1), ("beta2", args.beta2), ("ema_decay", args.ema_decay)):
        if not 0 <= value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be in [0, 1), got {value}")
    if not 0 <= args.seed <= MAX_SEED or (args.threads is not None and args.threads < 1):
        raise ValueError(f"--seed must be from 0 to 2**63 - 1 and --threads >= 1, got {args.seed}, {args.threads}")
    out = output_file("--out", args.out)
    output_file("--out", out.with_suffix(".json"))
    output_folder("--log-dir", args.log_dir or out.parent / f"{out.stem}_logs")


def _module(args: argparse.Namespace, datamodule: Any) -> Any:
    """The WGAN-GP LightningModule for the datamodule's image shape and classes."""
    from ggl.priors.dcgan import DCGANConfig
    from ggl.priors.training import WGANGP

    config = DCGANConfig(
        latent_dim=args.latent_dim,
        num_classes=0 if args.unconditional else datamodule.num_classes,
        channels=datamodule.image_shape[0],
        image_size=args.image_size,
        width=args.width,
    )
    return WGANGP(
        config,
        lr=args.lr,
        betas=(args.beta1, args.beta2),
        critic_steps=args.critic_steps,
        penalty=args.penalty,
        ema_decay=args.ema_decay,
        generator_steps=args.generator_steps,
        sample_every=args.save_every,
    )


def _provenance(args: argparse.Namespace, argv: list[str] | None, datamodule: Any) -> dict[str, Any]:
    """What the saved prior records about how it was made (the exact command included)."""
    command = f"python -m {__package__}.train_prior " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    return {
        "command": command,
        "data": args.data,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "normalization": {
            "mean": list(datamodule.normalization.mean),
            "std": list(datamodule.normalization.std),
        },
    }


def _trainer(args: argparse.Namespace, out: Path, log_dir: Path, extra: dict[str, Any]) -> Any:
    """A one-device Lightning trainer that saves the prior and a resumable checkpoint every ``--save-every``."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from ggl.priors.training import SavePrior

    checkpoints = ModelCheckpoint(
        dirpath=log_dir, filename="last", every_n_train_steps=args.save_every * args.critic_steps
    )
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=-1,
        max_time={"minutes": args.max_minutes} if args.max_minutes else None,
        logger=TensorBoardLogger(str(log_dir), name="", version=""),
        callbacks=[SavePrior(out, every=args.save_every, extra=extra), checkpoints],
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        log_every_n_steps=50,
    )


def main(argv: list[str] | None = None) -> int:
    """Train and save a prior; 2 when the data is missing or the options are invalid."""
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import pytorch_lightning as pl
    import torch

    from ggl.data import DataNotFoundError

    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)
    try:
        datamodule = _datamodule(args)
        datamodule.setup("fit")
    except (DataNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    log_dir = Path(args.log_dir) if args.log_dir else out.parent / f"{out.stem}_logs"
    module = _module(args, datamodule)
    trainer = _trainer(args, out, log_dir, _provenance(args, argv, datamodule))
    resume = log_dir / "last.ckpt"
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if args.resume and resume.is_file() else None)
    print(f"saved {out} after {int(module.completed_generator_steps)} generator steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
