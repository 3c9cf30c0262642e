"""Batched population evaluation equals the serial one-candidate loop, for every engine and victim."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from ggl.attacks.batched import (
    ENGINES,
    SERIAL_FORMED_FLOATS,
    PopulationObjective,
    choose_engine,
    formed_floats,
)
from ggl.attacks.objective import gradient_distance
from ggl.defenses import make_defense
from ggl.fl import make_victim, shared_update

VICTIM_SHAPES = [("lenet", (1, 16, 16)), ("convnet", (1, 16, 16)), ("resnet18", (3, 8, 8))]
BATCHED = sorted(name for name in ENGINES if name != "serial")
_SERIAL_CACHE: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor]] = {}


def _setup(name: str, shape: tuple[int, int, int], population: int = 3, batch: int = 2, seed: int = 0):
    model = make_victim(name, num_classes=10, image_shape=shape, seed=seed).double()
    rng = torch.Generator().manual_seed(seed)
    private = torch.randn(batch, *shape, generator=rng, dtype=torch.float64)
    labels = torch.randint(0, 10, (batch,), generator=rng)
    update = shared_update(model, private, labels)
    candidates = torch.randn(population, batch, *shape, generator=rng, dtype=torch.float64)
    return model, update, labels, candidates


def _mask(gradients: list[torch.Tensor]) -> list[torch.Tensor]:
    """A fixed sparsification-like simulation: keep every other entry of each tensor."""
    out = []
    for g in gradients:
        keep = (torch.arange(g[0].numel()) % 2 == 0).reshape(g.shape[1:]).to(g)
        out.append(g * keep)
    return out


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _independent_loss(model, update, labels, candidates, simulate=None, metric="l2") -> torch.Tensor:
    """Reference written without the module: one autograd.grad call per candidate."""
    losses = []
    for batch in candidates:
        grads = torch.autograd.grad(F.cross_entropy(model(batch), labels), list(model.parameters()))
        trial = [g.unsqueeze(0) for g in grads]
        if simulate is not None:
            trial = simulate(trial)
        losses.append(gradient_distance(trial, update.gradients, metric))
    return torch.cat(losses)


@pytest.mark.parametrize("name,shape", VICTIM_SHAPES[:2])
def test_serial_engine_matches_independent_reference(name, shape):
    model, update, labels, candidates = _setup(name, shape)
    losses = PopulationObjective(model, update.gradients, labels, engine="serial")(candidates)
    assert _relative(losses, _independent_loss(model, update, labels, candidates)) < 1e-10


def _losses_and_image_gradients(engine, model, update, labels, candidates, simulate):
    images = candidates.clone().requires_grad_(True)
    objective = PopulationObjective(model, update.gradients, labels, simulate=simulate, engine=engine)
    losses = objective(images, create_graph=True)
    (image_gradient,) = torch.autograd.grad(losses.sum(), images)
    return losses.detach(), image_gradient


CASES = [
    pytest.param(*victim, simulate, id=f"{victim[0]}-{'masked' if simulate else 'plain'}")
    for victim in VICTIM_SHAPES[:2]
    for simulate in (None, _mask)
]
# ResNet-18 (BatchNorm, in-place residual adds) in float64 with double backward takes ~10 s an engine: slow mark;
# the fast run checks its losses in float32 below.
CASES.append(pytest.param(*VICTIM_SHAPES[2], None, id="resnet18-plain", marks=pytest.mark.slow))


@pytest.mark.parametrize("engine", BATCHED)
@pytest.mark.parametrize("name,shape,simulate", CASES)
def test_batched_equals_serial_losses_and_image_gradients(engine, name, shape, simulate):
    if engine == "inner" and simulate is not None:
        pytest.skip("the inner-product engine applies without a simulation only (see the refusal test)")
    population, batch = (2, 2) if name == "resnet18" else (3, 2)
    model, update, labels, candidates = _setup(name, shape, population, batch)
    key = (name, simulate is not None)
    if key not in _SERIAL_CACHE:
        _SERIAL_CACHE[key] = _losses_and_image_gradients("serial", model, update, labels, candidates, simulate)
    serial_losses, serial_image_gradient = _SERIAL_CACHE[key]
    losses, image_gradient = _losses_and_image_gradients(engine, model, update, labels, candidates, simulate)
    assert _relative(losses, serial_losses) < 1e-4
    assert _relative(image_gradient, serial_image_gradient) < 1e-4
    assert serial_image_gradient.abs().max() > 0


def test_resnet18_float32_losses_match_serial_for_hooks_engines():
    model = make_victim("resnet18", num_classes=10, image_shape=(3, 8, 8), seed=2)
    rng = torch.Generator().manual_seed(2)
    labels = torch.tensor([3, 8])
    update = shared_update(model, torch.randn(2, 3, 8, 8, generator=rng), labels)
    candidates = torch.randn(3, 2, 3, 8, 8, generator=rng)
    serial = PopulationObjective(model, update.gradients, labels, engine="serial")(candidates)
    for engine in ("hooks", "inner"):  # vmap on ResNet-18 is covered by the slow float64 case
        losses = PopulationObjective(model, update.gradients, labels, engine=engine)(candidates)
        assert _relative(losses, serial) < 1e-4, engine


@pytest.mark.parametrize("engine", BATCHED)
def test_float32_population_with_chunks_matches_serial(engine):
    model = make_victim("convnet", num_classes=10, image_shape=(1, 16, 16), seed=1)
    rng = torch.Generator().manual_seed(1)
    labels = torch.tensor([1, 7])
    update = shared_update(model, torch.randn(2, 1, 16, 16, generator=rng), labels)
    candidates = torch.randn(7, 2, 1, 16, 16, generator=rng)
    serial = PopulationObjective(model, update.gradients, labels, metric="cosine", engine="serial")(candidates)
    chunked = PopulationObjective(model, update.gradients, labels, metric="cosine", engine=engine, chunk_size=3)
    assert _relative(chunked(candidates), serial) < 1e-4


def test_automatic_chunks_fit_the_memory_budget_and_match_serial():
    """``chunk_size=None``: the most candidates whose gradients fit the budget (a full-gradient engine with a
    simulation holds two copies, ``inner`` one layer), and the chunked losses equal the serial ones."""
    model = make_victim("convnet", num_classes=10, image_shape=(1, 16, 16), seed=1)
    rng = torch.Generator().manual_seed(1)
    labels = torch.tensor([1, 7])
    update = shared_update(model, torch.randn(2, 1, 16, 16, generator=rng), labels)
    candidates = torch.randn(7, 2, 1, 16, 16, generator=rng)
    sizes = [p.numel() for p in model.parameters()]
    defense = make_defense("clipping", bound=0.5)
    simulate = functools.partial(defense.simulate, received=update)
    budget = 3.5 * 2 * 4 * sum(sizes) / 2**20  # three and a half candidates of two full copies
    hooks = PopulationObjective(
        model, update.gradients, labels, engine="hooks", simulate=simulate, memory_budget_mib=budget
    )
    assert hooks.candidate_mib == pytest.approx(2 * 4 * sum(sizes) / 2**20)
    assert hooks.automatic_chunk_size(7) == 3 and hooks.automatic_chunk_size(2) == 2
    serial = PopulationObjective(model, update.gradients, labels, engine="serial", simulate=simulate)(candidates)
    assert _relative(hooks(candidates), serial) < 1e-4
    inner = PopulationObjective(model, update.gradients, labels, engine="inner", memory_budget_mib=budget)
    assert inner.candidate_mib == pytest.approx(4 * max(sizes) / 2**20)
    assert inner.automatic_chunk_size(7) == 7
    assert PopulationObjective(model, update.gradients, labels, memory_budget_mib=1e-9).automatic_chunk_size(7) == 1
    with pytest.raises(ValueError, match="memory_budget_mib"):
        PopulationObjective(model, update.gradients, labels, memory_budget_mib=0)


@pytest.mark.parametrize("engine", BATCHED)
def test_true_batch_scores_zero_and_gradients_match_update(engine):
    model, update, labels, _ = _setup("lenet", (1, 16, 16))
    rng = torch.Generator().manual_seed(0)
    private = torch.randn(2, 1, 16, 16, generator=rng, dtype=torch.float64)
    population = torch.stack([private, torch.zeros_like(private)])
    objective = PopulationObjective(model, update.gradients, labels, engine=engine)
    losses = objective(population)
    # The inner-product engine computes ||g||^2 - 2<g, t> + ||t||^2: zero up to rounding relative to ||t||^2.
    scale = sum(float(g.pow(2).sum()) for g in update.gradients)
    assert losses[0] <= 1e-12 * scale and losses[1] > 1e-6 * scale
    gradients = objective.gradients(population)
    assert all(torch.allclose(g[0], t) for g, t in zip(gradients, update.gradients))


def test_auto_resolves_to_a_registered_engine():
    model = make_victim("lenet", image_shape=(1, 16, 16))
    assert choose_engine(model) in ENGINES
    update = shared_update(model, torch.zeros(1, 1, 16, 16), torch.tensor([0]))
    assert PopulationObjective(model, update.gradients, torch.tensor([0])).engine_name == choose_engine(model)


def test_bad_input_names_the_field():
    model, update, labels, candidates = _setup("lenet", (1, 16, 16))
    with pytest.raises(ValueError, match="engine"):
        PopulationObjective(model, update.gradients, labels, engine="fast")
    with pytest.raises(ValueError, match="metric"):
        PopulationObjective(model, update.gradients, labels, metric="l3")
    with pytest.raises(ValueError, match="target_gradients"):
        PopulationObjective(model, update.gradients[:-1], labels)
    with pytest.raises(ValueError, match="labels"):
        PopulationObjective(model, update.gradients, labels.float())
    with pytest.raises(ValueError, match="chunk_size"):
        PopulationObjective(model, update.gradients, labels, chunk_size=0)
    with pytest.raises(ValueError, match="eval"):
        PopulationObjective(model.train(), update.gradients, labels)
    model.eval()
    objective = PopulationObjective(model, update.gradients, labels)
    with pytest.raises(ValueError, match="images"):
        objective(candidates[0])
    with pytest.raises(ValueError, match="labels"):
        objective(candidates[:, :1])


def test_hooks_refuses_unsupported_layers_and_auto_falls_back_to_vmap():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)
    ).eval()
    labels = torch.tensor([0, 2])
    update = shared_update(model, torch.randn(2, 2, 4, 4), labels)
    with pytest.raises(ValueError, match=r"engine 'hooks'.*0 \(Conv2d\).*2 \(LayerNorm\)"):
        PopulationObjective(model, update.gradients, labels, engine="hooks")
    objective = PopulationObjective(model, update.gradients, labels)
    assert objective.engine_name == "vmap"
    candidates = torch.randn(3, 2, 2, 4, 4)
    serial = PopulationObjective(model, update.gradients, labels, engine="serial")(candidates)
    assert _relative(objective(candidates), serial) < 1e-4


def test_inner_engine_refuses_a_simulation_or_l1_and_auto_avoids_it():
    model, update, labels, candidates = _setup("lenet", (1, 16, 16))
    with pytest.raises(ValueError, match="engine 'inner' needs metric 'l2' or 'cosine' and no simulation"):
        PopulationObjective(model, update.gradients, labels, simulate=_mask, engine="inner")
    with pytest.raises(ValueError, match="metric"):
        PopulationObjective(model, update.gradients, labels, metric="l1", engine="inner")
    assert PopulationObjective(model, update.gradients, labels, simulate=_mask).engine_name == "hooks"
    assert PopulationObjective(model, update.gradients, labels, metric="l1").engine_name == "hooks"


def test_hooks_engines_handle_strided_dilated_and_batched_linear_layers():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 24, 3, stride=1, padding=1, bias=False),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(96, 5),
    ).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    rng = torch.Generator().manual_seed(3)
    labels = torch.tensor([4, 0, 1])
    update = shared_update(model, torch.randn(3, 2, 10, 10, generator=rng, dtype=torch.float64), labels)
    candidates = torch.randn(4, 3, 2, 10, 10, generator=rng, dtype=torch.float64)
    serial = PopulationObjective(model, update.gradients, labels, engine="serial")(candidates)
    for engine in ("hooks", "inner"):
        assert _relative(PopulationObjective(model, update.gradients, labels, engine=engine)(candidates), serial) < 1e-8


def _defended(name: str, spec: dict, batch: int = 1):
    """A float64 victim, its update under ``spec`` and three candidate batches (Soteria needs the private batch)."""
    model, update, labels, candidates = _setup(name, (1, 16, 16), population=3, batch=batch)
    rng = torch.Generator().manual_seed(5)
    private = torch.randn(batch, 1, 16, 16, generator=rng, dtype=torch.float64)
    labels = torch.randint(0, 10, (batch,), generator=rng)
    update = shared_update(model, private, labels)
    defense = make_defense(**spec)
    defended = defense(update, model=model, images=private, labels=labels, generator=torch.Generator().manual_seed(0))
    return model, defense, defended, labels, candidates


LINEAR_DEFENSES = [
    {"name": "clipping", "bound": 0.05},
    {"name": "clipping", "bound": 0.05, "mode": "per_layer"},
    {"name": "clipping", "bound": 1e5},
    {"name": "dpsgd", "max_grad_norm": 0.05, "noise_multiplier": 0.1},
    {"name": "soteria", "pruning_rate": 0.5},
    {"name": "sparsification", "ratio": 0.9},
    {"name": "gaussian", "sigma": 0.01},
    {"name": "quantization", "bits": 4},
]


@pytest.mark.parametrize("spec", LINEAR_DEFENSES, ids=lambda spec: "-".join(map(str, spec.values())))
def test_linear_simulation_is_the_defense_simulation(spec):
    """Each defense's masks-and-clipping description computes exactly its own ``simulate``."""
    model, defense, defended, labels, candidates = _defended("lenet", spec)
    trials = PopulationObjective(model, defended.gradients, labels, engine="serial").gradients(candidates)
    linear = defense.linear_simulation(defended)
    expected = defense.simulate(trials, received=defended)
    if spec["name"] == "soteria":  # its simulate is its linear form: check that against the rule written out here
        weight = [i for i, g in enumerate(defended.gradients) if g.ndim == 2][-1]
        kept = (defended.gradients[weight] != 0).any(dim=0).to(trials[weight])
        expected = [t * kept if i == weight else t for i, t in enumerate(trials)]
    for got, want in zip(linear.apply(trials), expected):
        assert torch.allclose(got, want, rtol=1e-12, atol=0)
    identity = spec["name"] in ("gaussian", "quantization") or spec.get("bound") == 1e5  # unclipped: n < bound
    assert any(not torch.equal(t, e) for t, e in zip(trials, expected)) == (not identity)


def test_a_simulation_that_depends_on_the_candidate_has_no_linear_form():
    model, defense, defended, labels, _ = _defended("lenet", {"name": "sign"})
    assert defense.linear_simulation(defended) is None
    objective = PopulationObjective(
        model, defended.gradients, labels, simulate=functools.partial(defense.simulate, received=defended)
    )
    assert objective.engine_name == "hooks"


@pytest.mark.parametrize("name", ["lenet", "convnet"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("spec", LINEAR_DEFENSES[:6], ids=lambda spec: "-".join(map(str, spec.values())))
def test_inner_engine_with_a_linear_simulation_equals_the_serial_simulation(name, metric, spec):
    """Adaptive losses and image gradients of the statistics engine equal the serial loop with ``simulate``."""
    batch = 2 if spec["name"] != "dpsgd" else 1
    model, defense, defended, labels, candidates = _defended(name, spec, batch)
    simulate = functools.partial(defense.simulate, received=defended)
    linear = defense.linear_simulation(defended)

    def evaluate(engine: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = candidates[:, :batch].clone().requires_grad_(True)
        objective = PopulationObjective(
            model, defended.gradients, labels, metric, simulate=simulate, engine=engine, linear_simulation=linear
        )
        losses = objective(images, create_graph=True)
        return losses.detach(), torch.autograd.grad(losses.sum(), images)[0]

    serial_losses, serial_gradient = evaluate("serial")
    losses, gradient = evaluate("inner")
    assert (
        PopulationObjective(
            model, defended.gradients, labels, metric, simulate=simulate, linear_simulation=linear
        ).engine_name
        == "inner"
    )
    assert _relative(losses, serial_losses) < 1e-4
    assert _relative(gradient, serial_gradient) < 1e-4 and serial_gradient.abs().max() > 0


def _linear_simulation(victim: str, shape: tuple[int, int, int], defense_spec: dict):
    """A victim, its received update under ``defense_spec`` and the defense's linear simulation of it."""
    model = make_victim(victim, image_shape=shape)
    images, labels = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)), torch.tensor([3])
    defense = make_defense(**defense_spec)
    received = defense(shared_update(model, images, labels), model=model, images=images, labels=labels)
    return model, received, defense.linear_simulation(received)


@pytest.mark.parametrize(
    ("victim", "shape", "defense_spec", "engine"),
    [
        ("resnet18", (3, 8, 8), {"name": "sparsification", "ratio": 0.9}, "serial"),
        ("resnet18", (3, 8, 8), {"name": "soteria", "pruning_rate": 0.6}, "inner"),
        ("lenet", (1, 32, 32), {"name": "sparsification", "ratio": 0.9}, "inner"),
    ],
)
def test_auto_runs_the_serial_loop_where_inner_would_form_large_masked_gradients(
    victim: str, shape: tuple[int, int, int], defense_spec: dict, engine: str
) -> None:
    model, received, linear = _linear_simulation(victim, shape, defense_spec)
    masked = sum(p.numel() for i, p in enumerate(model.parameters()) if i in linear.masks)
    column = defense_spec["name"] == "soteria"
    assert formed_floats(model, linear) == (0 if column else masked)
    assert (formed_floats(model, linear) > SERIAL_FORMED_FLOATS) is (engine == "serial")
    objective = PopulationObjective(model, received.gradients, torch.tensor([3]), linear_simulation=linear)
    assert objective.engine_name == engine
