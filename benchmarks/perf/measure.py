"""Measurements behind ``python -m benchmarks.perf``: one GGL search setting, timed serially and batched.

A candidate is what GGL scores: a latent z through the DCGAN generator, normalised, then the victim gradient of
its batch and the distance to the shared update. The serial rate is one candidate at a time (the paper's loop);
the batched rate is one ``PopulationObjective`` call per population. The FLOP-limited rate divides the FLOP/s the
same device reaches on a plain batched forward+backward of the victim by the FLOPs of one candidate.
"""

from __future__ import annotations

import functools
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ggl.attacks.batched import PopulationObjective
from ggl.defenses import Defense
from ggl.fl import Normalization, SharedUpdate, make_victim, shared_update
from ggl.priors.dcgan import DCGANConfig, DCGANGenerator

T = TypeVar("T")

LOSSES_CHECKED = 8
"""Candidates whose losses are compared between the serial loop and each batched engine."""


@dataclass
class Setting:
    """One victim at one image size on one device, with a random generator and a random shared update."""

    victim: str
    image_size: int
    channels: int
    batch: int
    device: torch.device
    model: nn.Module
    generator: DCGANGenerator
    normalization: Normalization
    target: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    private: torch.Tensor

    def images(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (P * B, d) -> normalised candidate batches (P, B, C, H, W)."""
        pixels = self.generator(latents)
        normalised = self.normalization.normalize(pixels)
        return normalised.reshape(-1, self.batch, *normalised.shape[1:])

    def objective(
        self, engine: str, chunk_size: int | None = None, defense: Defense | None = None
    ) -> PopulationObjective:
        """The batched objective against the plain update, or adaptive against ``defense``'s update of it."""
        if defense is None:
            return PopulationObjective(self.model, self.target, self.labels, engine=engine, chunk_size=chunk_size)
        received = self.defended(defense)
        return PopulationObjective(
            self.model,
            received.gradients,
            self.labels,
            simulate=functools.partial(defense.simulate, received=received),
            linear_simulation=defense.linear_simulation(received),
            engine=engine,
            chunk_size=chunk_size,
        )

    def defended(self, defense: Defense) -> SharedUpdate:
        """``defense`` applied to the client's update of the private batch (seeded)."""
        update = shared_update(self.model, self.private, self.labels)
        generator = torch.Generator(device=self.private.device).manual_seed(0)
        return defense(update, model=self.model, images=self.private, labels=self.labels, generator=generator)


def build_setting(
    victim: str, image_size: int, channels: int, batch: int, device: torch.device, seed: int = 0
) -> Setting:
    """Seeded victim, DCGAN generator (random weights, 128-d latent) and a shared update of random images."""
    shape = (channels, image_size, image_size)
    model = make_victim(victim, num_classes=10, image_shape=shape, seed=seed).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = DCGANGenerator(DCGANConfig(channels=channels, image_size=image_size)).eval().to(device)
    normalization = Normalization((0.5,) * channels, (0.5,) * channels)
    rng = torch.Generator().manual_seed(seed + 1)
    private = torch.rand(batch, *shape, generator=rng).to(device)
    labels = torch.randint(0, 10, (batch,), generator=rng).to(device)
    inputs = normalization.normalize(private)
    update = shared_update(model, inputs, labels)
    return Setting(
        victim, image_size, channels, batch, device, model, generator, normalization, update.gradients, labels, inputs
    )


def latents(setting: Setting, population: int, seed: int = 0) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    return torch.randn(population * setting.batch, setting.generator.latent_dim, generator=rng).to(setting.device)


def batched_losses(
    setting: Setting, objective: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor
) -> torch.Tensor:
    """The whole population in one pass: generator forward, then one objective call. (P,)"""
    with torch.no_grad():
        images = setting.images(z)
    return objective(images)


def serial_losses(setting: Setting, objective: PopulationObjective, z: torch.Tensor) -> torch.Tensor:
    """One candidate at a time, generator included, as the paper's code scores a population. (P,)"""
    losses = []
    for candidate in z.split(setting.batch):
        with torch.no_grad():
            images = setting.images(candidate)
        losses.append(objective(images))
    return torch.cat(losses)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(
    fn: Callable[[], Any], device: torch.device, repeats: int, max_seconds: float, warm_up: bool = True
) -> list[float]:
    """Seconds of ``repeats`` calls (device events on GPU) after one warm-up call, unless the caller has just made
    that call itself (``warm_up=False``: the call that checked the losses); stops early past max_seconds."""
    if warm_up:
        fn()
    synchronize(device)
    seconds: list[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - began)
        if sum(seconds) > max_seconds:
            break
    return seconds


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory(fn: Callable[[], T], device: torch.device) -> tuple[T, float, str]:
    """``fn()``'s result, the peak memory the call adds in MiB, and how that was measured. The perf rows measure
    it on their first call (the warm-up that also checks the losses), so a one-time allocation counts too.

    GPU: ``torch.cuda.max_memory_allocated`` above the allocation before the call. CPU (tracemalloc does not see
    torch's allocator): the resident-set high-water mark (VmHWM) after resetting it through /proc/self/clear_refs,
    minus the resident set before the call; where that reset is not possible, the growth of ``ru_maxrss``
    (a lower bound: only growth beyond the process's earlier peak shows).
    """
    if device.type == "cuda":
        synchronize(device)
        allocated = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        synchronize(device)
        return result, (torch.cuda.max_memory_allocated(device) - allocated) / 2**20, "cuda_max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        result = fn()
        peak = _status_kib("VmHWM")
        if before is not None and peak is not None:
            return result, max(peak - before, 0) / 1024, "rss_high_water_mark"
    except OSError:
        pass
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = fn()
    return result, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024, "ru_maxrss_growth"


def candidate_flops(setting: Setting) -> int:
    """FLOPs of one candidate: generator forward plus victim forward and backward over its B images."""
    z = latents(setting, 1)
    parameters = list(setting.model.parameters())
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            images = setting.images(z)[0]
        loss = F.cross_entropy(setting.model(images), setting.labels)
        torch.autograd.grad(loss, parameters)
    return int(counter.get_total_flops())


def reference_rate(setting: Setting, count: int, repeats: int, max_seconds: float) -> tuple[float, int]:
    """FLOP/s of a plain forward+backward of the victim on ``count`` images (parameter gradients only)."""
    rng = torch.Generator().manual_seed(7)
    shape = (count, setting.channels, setting.image_size, setting.image_size)
    images = torch.randn(*shape, generator=rng).to(setting.device)
    labels = setting.labels.repeat((count + setting.batch - 1) // setting.batch)[:count]
    parameters = list(setting.model.parameters())

    def step() -> None:
        torch.autograd.grad(F.cross_entropy(setting.model(images), labels), parameters)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = int(counter.get_total_flops())
    seconds = statistics.median(timings(step, setting.device, repeats, max_seconds))
    return flops / seconds, flops


def matmul_peak_rate(device: torch.device, repeats: int, max_seconds: float, size: int = 1024) -> float:
    """FLOP/s of a dense float32 ``size`` x ``size`` matrix product: the device's practical peak for this dtype.

    The fastest of at least 10 calls: a peak is the best rate the device reached, and on a shared 2-core machine
    the median of two calls at the start of a run once came out at 93 GFLOP/s where the same product ran at
    150-200 GFLOP/s in the same minute (ResNet-18 then showed 125% of that "peak")."""
    rng = torch.Generator().manual_seed(11)
    left = torch.randn(size, size, generator=rng).to(device)
    right = torch.randn(size, size, generator=rng).to(device)
    seconds = min(timings(lambda: left @ right, device, max(repeats, 10), max_seconds))
    return 2 * size**3 / seconds
