"""The attack base: target/result types, registry, hyperparameters and spec, run options, seeds, the restarts
loop, the evaluation budget, logging through Lightning loggers, victim safety, the still-improving flag."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ggl.attacks import (
    ATTACKS,
    RUN_OPTIONS,
    AttackTarget,
    EvaluationBudget,
    GradientInversionAttack,
    InvertingGradients,
    Reconstruction,
    make_attack,
    register_attack,
)
from ggl.attacks.base import still_improving
from ggl.defenses import make_defense
from ggl.fl import Normalization, shared_update

QUICK = {
    "dlg": {"iterations": 3, "max_iter": 2},
    "idlg": {"iterations": 3, "max_iter": 2},
    "inverting_gradients": {"iterations": 6},
}


def test_target_has_no_field_for_private_images() -> None:
    names = {f.name for f in dataclasses.fields(AttackTarget)}
    assert names == {"model", "update", "defense", "image_shape", "normalization", "labels", "protocol"}
    assert not any("image" in name and name != "image_shape" for name in names)


def test_reconstruction_fields() -> None:
    names = [f.name for f in dataclasses.fields(Reconstruction)]
    assert names == ["images", "labels", "trace", "evaluations", "seconds", "extras"]


def test_target_validation(make_case) -> None:
    case = make_case("lenet")
    model, update = case.target.model, case.target.update
    with pytest.raises(ValueError, match="image_shape"):
        AttackTarget(model, update, image_shape=(32, 32))
    with pytest.raises(ValueError, match="normalization"):
        AttackTarget(model, update, image_shape=(1, 32, 32), normalization=Normalization.identity(3))
    with pytest.raises(ValueError, match="labels"):
        AttackTarget(model, update, image_shape=(1, 32, 32), labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labels"):
        AttackTarget(model, update, image_shape=(1, 32, 32), labels=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="gradient tensors"):
        AttackTarget(model, update.with_gradients(update.gradients[:-1]), image_shape=(1, 32, 32))
    default = AttackTarget(model, update, image_shape=(1, 32, 32))
    assert default.normalization == Normalization.identity(1)
    assert default.batch_size == 1


def _poisoned(gradients: tuple[torch.Tensor, ...], kind: str) -> tuple[torch.Tensor, ...]:
    """The update's gradients with every entry NaN or inf, or one entry of the last tensor NaN."""
    if kind == "one-nan":
        last = gradients[-1].clone()
        last.view(-1)[0] = float("nan")
        return (*gradients[:-1], last)
    value = float("nan") if kind == "all-nan" else float("inf")
    return tuple(torch.full_like(g, value) for g in gradients)


@pytest.mark.parametrize("kind", ["all-nan", "all-inf", "one-nan"])
def test_target_refuses_non_finite_updates_naming_the_defense(make_case, kind: str) -> None:
    case = make_case("lenet")
    model, update = case.target.model, case.target.update
    poisoned = update.with_gradients(_poisoned(update.gradients, kind))
    value = "NaN" if "nan" in kind else "inf"
    with pytest.raises(ValueError, match=f"update from defense 'gaussian' has non-finite values \\({value}\\)"):
        AttackTarget(model, poisoned, defense=make_defense("gaussian"), image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match=f"AttackTarget.update has non-finite values \\({value}\\)"):
        AttackTarget(model, poisoned, image_shape=(1, 32, 32))


def test_target_refuses_malformed_updates_naming_the_defense(make_case) -> None:
    case = make_case("lenet")
    model, update = case.target.model, case.target.update
    defense = make_defense("none")
    flat = update.with_gradients((update.gradients[0].flatten(), *update.gradients[1:]))
    with pytest.raises(ValueError, match=r"update from defense 'none': gradients\[0\] has shape"):
        AttackTarget(model, flat, defense=defense, image_shape=(1, 32, 32))
    integer = update.with_gradients((update.gradients[0].long(), *update.gradients[1:]))
    with pytest.raises(ValueError, match=r"gradients\[0\] must be a floating-point tensor"):
        AttackTarget(model, integer, defense=defense, image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="update from defense 'none' has .* gradient tensors"):
        AttackTarget(model, update.with_gradients(update.gradients[1:]), defense=defense, image_shape=(1, 32, 32))


def test_registry_and_make_attack_errors() -> None:
    assert {"dlg", "idlg", "inverting_gradients"} <= set(ATTACKS)
    with pytest.raises(ValueError, match="allowed: .*dlg"):
        make_attack("no-such-attack")
    with pytest.raises(ValueError, match="unknown parameter.*sigma"):
        make_attack("idlg", sigma=1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_attack("dlg")(ATTACKS["idlg"])
    with pytest.raises(ValueError, match="iterations"):
        make_attack("dlg", iterations=0)
    with pytest.raises(ValueError, match="metric"):
        make_attack("inverting_gradients", metric="l3")
    with pytest.raises(ValueError, match="tv_weight"):
        make_attack("inverting_gradients", tv_weight=-1)
    with pytest.raises(ValueError, match="adaptive"):
        make_attack("idlg", adaptive="yes")
    assert "ggl-test-duplicate" not in ATTACKS


def test_unknown_parameter_error_lists_each_allowed_name_once() -> None:
    with pytest.raises(ValueError, match="unknown parameter") as error:
        make_attack("inverting_gradients", sigma=1.0)
    allowed = str(error.value).split("allowed: ")[1].split(", ")
    assert allowed == sorted(set(allowed)) == InvertingGradients.hyperparameter_names()
    assert {"iterations", "restarts", "budget", "seed", "adaptive", "metric", "tv_weight"} <= set(allowed)


@pytest.mark.parametrize("name", ["dlg", "idlg", "inverting_gradients"])
def test_spec_is_the_hyperparameters_and_round_trips(name: str) -> None:
    attack = make_attack(name, seed=3, budget=50, **QUICK[name])
    spec = attack.spec
    assert spec == {"name": name, **attack.hparams}
    assert spec["seed"] == 3 and spec["budget"] == 50 and not set(RUN_OPTIONS) & set(spec)
    rebuilt = make_attack(**spec)
    assert type(rebuilt) is type(attack) and rebuilt.spec == spec
    assert set(spec) - {"name"} == set(type(attack).hyperparameter_names())
    defaults = make_attack(name).spec
    assert set(defaults) == set(spec) and defaults["restarts"] == 1 and defaults["budget"] is None


def test_spec_holds_converted_values() -> None:
    spec = make_attack("inverting_gradients", lr=1, tv_weight=0).spec
    assert spec["lr"] == 1.0 and isinstance(spec["lr"], float) and isinstance(spec["tv_weight"], float)
    assert spec["metric"] == "cosine" and spec["iterations"] == 24_000


@pytest.mark.parametrize("option", ["accelerator", "progress_bar", "log_dir", "log_every", "logger"])
def test_run_options_are_refused_by_constructors(option: str) -> None:
    with pytest.raises(ValueError, match=f"unknown parameter.*{option}"):
        make_attack("idlg", **{option: None})
    with pytest.raises(TypeError, match=option):
        InvertingGradients(**{option: None})


def test_reconstruct_checks_its_run_options(make_case) -> None:
    case = make_case("lenet")
    with pytest.raises(ValueError, match="log_every"):
        make_attack("idlg", **QUICK["idlg"]).reconstruct(case.target, log_every=0)
    with pytest.raises(ValueError, match="progress_bar"):
        make_attack("idlg", **QUICK["idlg"]).reconstruct(case.target, progress_bar="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dlg", "idlg", "inverting_gradients"])
def test_seed_reproducible_and_victim_untouched(name: str, make_case) -> None:
    case = make_case("lenet", batch=2)
    model = case.target.model
    before = [p.detach().clone() for p in model.parameters()]
    first = make_attack(name, seed=1, **QUICK[name]).reconstruct(case.target)
    again = make_attack(name, seed=1, **QUICK[name]).reconstruct(case.target)
    other = make_attack(name, seed=2, **QUICK[name]).reconstruct(case.target)
    assert first.images.shape == (2, 1, 32, 32) and first.labels.shape == (2,)
    assert 0 <= float(first.images.min()) and float(first.images.max()) <= 1
    assert torch.equal(first.images, again.images) and first.trace == again.trace
    assert not torch.equal(first.images, other.images)
    assert len(first.trace) == QUICK[name]["iterations"] and first.evaluations >= len(first.trace)
    assert first.seconds > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters()) and not model.training


class _BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def test_batchnorm_victim_stays_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = _BatchNormNet().eval()
    images = torch.rand(1, 1, 8, 8)
    update = shared_update(model, images, torch.tensor([2]))
    buffers = [b.clone() for b in model.buffers()]
    rec = make_attack("inverting_gradients", iterations=5).reconstruct(
        AttackTarget(model, update, image_shape=(1, 8, 8))
    )
    assert rec.labels.tolist() == [2]
    assert not model.training and not model.norm.training
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


def test_known_labels_are_used(make_case) -> None:
    case = make_case("lenet")
    wrong = (case.labels + 1) % 10
    target = dataclasses.replace(case.target, labels=wrong)
    assert make_attack("idlg", **QUICK["idlg"]).reconstruct(target).labels.tolist() == wrong.tolist()
    assert make_attack("idlg", **QUICK["idlg"]).reconstruct(case.target).labels.tolist() == case.labels.tolist()


def test_budget_stops_the_search(make_case) -> None:
    case = make_case("lenet")
    rec = make_attack("inverting_gradients", iterations=50, restarts=2, budget=12).reconstruct(case.target)
    assert len(rec.trace) == 12
    assert 12 <= rec.evaluations <= 13  # the final scoring of the interrupted trial is one more evaluation
    lbfgs = make_attack("idlg", iterations=50, max_iter=5, budget=12).reconstruct(case.target)
    assert 12 <= lbfgs.evaluations < 12 + 5 and len(lbfgs.trace) < 50


def test_restarts_keep_the_lowest_loss(make_case) -> None:
    case = make_case("lenet")
    rec = make_attack("inverting_gradients", iterations=8, restarts=3, seed=0).reconstruct(case.target)
    losses = rec.extras["trial_losses"]
    assert len(losses) == 3 and len(rec.trace) == 24
    assert rec.extras["best_trial"] == min(range(3), key=losses.__getitem__)
    assert rec.loss == min(losses)


class _Scripted(GradientInversionAttack):
    """A toy attack in a few lines: trial t reports ``losses[t]`` and spends one evaluation every step."""

    def __init__(self, *, losses: list[float], iterations: int = 3, **shared: Any) -> None:
        super().__init__(iterations=iterations, restarts=len(losses), **shared)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.value = torch.zeros(1, requires_grad=True)
        return torch.optim.SGD([self.value], lr=0.0)

    def search_step(self, step: int) -> float:
        self.spend(1)
        self.optimizers().step()  # type: ignore[union-attr]
        return self.hparams.losses[self.current_trial]

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        shape = (self.target.batch_size, *self.target.image_shape)
        images = torch.full(shape, self.current_trial / 10)
        return images, torch.zeros(self.target.batch_size, dtype=torch.long), self.hparams.losses[self.current_trial]


def test_restarts_loop_returns_the_lowest_loss_trial(make_case) -> None:
    case = make_case("lenet")
    rec = _Scripted(losses=[3.0, math.nan, 1.0, 2.0]).reconstruct(case.target)
    assert rec.trace[::3] == pytest.approx([3.0, math.nan, 1.0, 2.0], nan_ok=True) and len(rec.trace) == 12
    assert rec.extras["best_trial"] == 2 and rec.loss == 1.0 and rec.evaluations == 12
    assert torch.all(rec.images == 0.2)


def test_budget_accountant_counts_every_evaluation_once_and_stops_all_trials(make_case) -> None:
    case = make_case("lenet")
    rec = _Scripted(losses=[3.0, 1.0, 2.0], budget=4).reconstruct(case.target)
    assert rec.evaluations == 4 and rec.trace == [3.0, 3.0, 3.0, 1.0]
    assert rec.extras["trial_losses"] == [3.0, 1.0] and rec.extras["best_trial"] == 1
    budget = EvaluationBudget(limit=5)
    budget.spend(3)
    assert not budget.exhausted
    budget.spend(2)
    assert budget.exhausted and budget.spent == 5 and not EvaluationBudget(None, 10**9).exhausted


class _StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        assert isinstance(pl_module, GradientInversionAttack)
        if batch_idx + 1 == self.step:
            trainer.should_stop = True


def test_callbacks_can_stop_the_search(make_case) -> None:
    case = make_case("lenet")
    attack = make_attack("inverting_gradients", iterations=40, restarts=3)
    rec = attack.reconstruct(case.target, callbacks=[_StopAt(7)])
    assert len(rec.trace) == 7 and len(rec.extras["trial_losses"]) == 1 and rec.images.isfinite().all()


def test_tensorboard_logs_loss_and_images(make_case, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    case = make_case("lenet")
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="inverting_gradients", default_hp_metric=False)
    rec = make_attack("inverting_gradients", iterations=6).reconstruct(case.target, logger=logger, log_every=3)
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    losses = [event.value for event in accumulator.Scalars("attack/loss")]
    assert losses == pytest.approx(rec.trace)
    steps = [event.step for event in accumulator.Images("attack/reconstruction")]
    assert steps == [3, 6, 6]


class _Collecting(pl.loggers.Logger):
    """A minimal Lightning logger that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []
        self.hyperparameters: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "collecting"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hyperparameters.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def test_per_step_loss_reaches_any_lightning_logger(make_case) -> None:
    case = make_case("lenet")
    logger = _Collecting()
    attack = make_attack("inverting_gradients", iterations=4, restarts=2)
    rec = attack.reconstruct(case.target, logger=logger)
    assert [step for step, _ in logger.rows] == list(range(8))  # steps run on over the trials
    assert [row["attack/loss"] for _, row in logger.rows] == rec.trace  # exact: logged in float64
    assert [row["attack/trial"] for _, row in logger.rows] == [0] * 4 + [1] * 4
    evaluations = [row["attack/evaluations"] for _, row in logger.rows]
    assert evaluations == sorted(evaluations) and evaluations[-1] <= rec.evaluations
    assert logger.hyperparameters == attack.hparams  # the spec reaches the logger too


def test_adaptive_applies_the_defense_simulation(make_case) -> None:
    defense = make_defense("sparsification", ratio=0.9)
    case = make_case("lenet", defense=defense)
    plain = make_attack("inverting_gradients", iterations=4, seed=0).reconstruct(case.target)
    adaptive = make_attack("inverting_gradients", iterations=4, seed=0, adaptive=True).reconstruct(case.target)
    assert plain.trace[0] != adaptive.trace[0]
    no_defense = dataclasses.replace(case.target, defense=None)
    adaptive_blind = make_attack("inverting_gradients", iterations=4, seed=0, adaptive=True).reconstruct(no_defense)
    assert adaptive_blind.trace == plain.trace


def test_reconstruct_rejects_other_inputs(make_case) -> None:
    case = make_case("lenet")
    with pytest.raises(ValueError, match="AttackTarget"):
        make_attack("idlg").reconstruct(case.images)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        ([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], True),  # cut off mid-descent
        ([5.0] * 10, False),  # flat
        ([5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.995], False),  # a 0.5% gain in the tail is not enough
        ([5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.98], True),  # a 2% gain is
        ([1.0, 1e-13, 1e-14, 0.0, 0.0], False),  # float-rounding gains near zero do not count
        ([1.0, 1e-3, 1e-5], True),  # large relative gains at small losses do
        ([3.0], False),  # one step: nothing to compare with
        ([4.0, 2.0], True),
        ([math.nan, math.nan, 1.0], True),  # the first finite loss arrives in the tail
        ([2.0, 1.0, math.nan], False),  # nothing finite in the tail
        ([2.0] + [1.0] * 7 + [0.5, math.inf], True),  # non-finite tail values are skipped
    ],
)
def test_still_improving_rule_on_hand_made_traces(trace: list[float], expected: bool) -> None:
    assert still_improving(trace) is expected


def test_still_improving_tail_is_the_last_fifth_and_convergence_overrides() -> None:
    descent = [float(100 - step) for step in range(100)]
    assert still_improving(descent) and not still_improving(descent, converged=True)
    plateau_then_drop = [10.0] * 79 + [9.0] + [9.0] * 20  # the drop is at step 80, before the last 20 steps
    assert not still_improving(plateau_then_drop)
    assert still_improving([10.0] * 80 + [9.0] * 20)


class _Traced(GradientInversionAttack):
    """A toy attack whose trial t reports ``traces[t][step]``; trial t ends with loss ``traces[t][-1]``."""

    def __init__(self, *, traces: list[list[float]], converged: bool = False, **shared: Any) -> None:
        super().__init__(iterations=len(traces[0]), restarts=len(traces), **shared)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.value = torch.zeros(1, requires_grad=True)
        return torch.optim.SGD([self.value], lr=0.0)

    def search_step(self, step: int) -> float:
        self.spend(1)
        self.optimizers().step()  # type: ignore[union-attr]
        return self.hparams.traces[self.current_trial][step]

    def search_converged(self) -> bool:
        return self.hparams.converged

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        images = torch.zeros(self.target.batch_size, *self.target.image_shape)
        labels = torch.zeros(self.target.batch_size, dtype=torch.long)
        return images, labels, self.hparams.traces[self.current_trial][-1]


def test_still_improving_reads_the_winning_trial_only(make_case) -> None:
    case = make_case("lenet")
    descending, flat = [5.0, 4.0, 3.0, 2.0, 1.0], [0.5] * 5
    assert _Traced(traces=[flat, descending]).reconstruct(case.target).extras["still_improving"] is False
    won_by_descent = _Traced(traces=[[9.0] * 5, [2.0, 1.5, 1.0, 0.5, 0.2]]).reconstruct(case.target)
    assert won_by_descent.extras["best_trial"] == 1 and won_by_descent.extras["still_improving"] is True
    stopped = _Traced(traces=[descending], converged=True).reconstruct(case.target)
    assert stopped.extras["still_improving"] is False
    cut = _Traced(traces=[descending, flat], budget=3).reconstruct(case.target)  # the budget stops trial 0
    assert cut.trace == [5.0, 4.0, 3.0] and cut.extras["still_improving"] is True


@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_attack_reports_still_improving(name: str, make_case) -> None:
    rec = make_attack(name, **QUICK[name]).reconstruct(make_case("lenet").target)
    assert isinstance(rec.extras["still_improving"], bool)
