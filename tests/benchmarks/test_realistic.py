"""The realistic-FL track end to end: the suite's update, training and variant fields, a custom victim and
datamodule through ``module:Class``, and the table across variants built from the variants' reports."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.config import SuiteError, load_suite
from benchmarks.report.axes import figure_text
from benchmarks.run import main
from benchmarks.shipped import suite_from_dict
from benchmarks.store import ResultsStore
from ggl import plugins

PLUGIN = '''
"""A small victim and a datamodule whose public split is shipped (800 of the 1,000 embedded images)."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ggl.data import EmbeddedFashionMNIST


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2, padding=1), nn.Sigmoid(), nn.Flatten())
        self.fc = nn.Linear(4 * (image_size // 2) ** 2, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


class ShippedSplit(EmbeddedFashionMNIST):
    def setup(self, stage=None) -> None:
        if self.public is None:
            super().setup("predict")
            images, labels = self.victims.tensors
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
            self.public = TensorDataset(images[order[:800]], labels[order[:800]])
            self.victims = TensorDataset(images[order[800:]], labels[order[800:]])
'''

SUITE = """
name: tiny-realistic
datamodule: {name: "tiny_parts:ShippedSplit", options: {image_size: 16}}
model: {name: "tiny_parts:TinyNet", seed: 0}
prior: null
victims: {count: 2, seed: 0, batch_size: 1}
references: {class_mean: true, prior_sample: false, ceiling_steps: 0}
utility: {enabled: false}
controls: true
attacks:
  - {name: idlg, iterations: 3, max_iter: 5}
defenses:
  - {name: none}
  - {name: clipping, bound: 0.5}
variants:
  - {name: baseline, label: "B = 1", axis: baseline}
  - {name: batch-2, label: "B = 2", axis: batch size, set: {victims.batch_size: 2}}
  - name: fedavg-3
    label: FedAvg 3 steps
    axis: local steps
    set: {update: {algorithm: fedavg, local_steps: 3, local_lr: 0.1}}
  - {name: trained-1, label: "1 epoch", axis: training stage, set: {model.train: {epochs: 1, batch_size: 64}}}
"""


@pytest.fixture
def suite_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The plugin and the suite in ``tmp_path``; the plugin registry empty, as in a new process."""
    monkeypatch.setattr(plugins, "_PLUGINS", {})
    plugin = tmp_path / "tiny_parts.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    suite = tmp_path / "tiny.yaml"
    suite.write_text(SUITE)
    return suite, plugin


def test_variants_resolve_to_suites_of_their_own(suite_files: tuple[Path, Path]) -> None:
    path, _ = suite_files
    base = load_suite(path)
    assert [v.name for v in base.variants] == ["baseline", "batch-2", "fedavg-3", "trained-1"]
    fedavg = load_suite(path, variant="fedavg-3")
    assert fedavg.name == "tiny-realistic.fedavg-3" and not fedavg.variants
    assert fedavg.protocol.describe() == "FedAvg (3 steps, lr 0.1)"
    assert fedavg.context()["update"]["local_steps"] == 3
    assert load_suite(path, ["victims.batch_size=3"], variant="batch-2").victims.batch_size == 3  # --set wins
    trained = load_suite(path, variant="trained-1")
    assert trained.model.train is not None and trained.model.train.stage == "1 epoch"
    for config in (base, fedavg, trained):
        assert suite_from_dict(config.to_dict(), "rows").config_hash() == config.config_hash()
    with pytest.raises(SuiteError, match="no variant 'batch-3'; its variants: baseline, batch-2"):
        load_suite(path, variant="batch-3")


def test_suites_without_the_new_sections_keep_their_hash() -> None:
    """``update``, ``model.train`` and ``variants`` are left out of the configuration when unset, so the published
    ``all`` board's rows still match the suite."""
    shipped = Path(__file__).resolve().parents[2] / "leaderboards" / "all" / "rows.jsonl"
    head = json.loads(shipped.read_text(encoding="utf-8").splitlines()[0])
    assert load_suite("all").config_hash() == head["config_hash"]


@pytest.mark.parametrize(
    ("override", "field", "message"),
    [
        ("update={algorithm: fedsgd, local_steps: 2}", "update.local_steps", "fedavg only"),
        ("update={algorithm: fedprox}", "update.algorithm", "fedsgd, fedavg"),
        ("update={algorithm: fedavg, local_lr: 0}", "update.local_lr", "positive"),
        ("model.train={epochs: -1}", "model.train.epochs", "non-negative"),
        ("model.train={optimizer: lbfgs}", "model.train.optimizer", "sgd, adam"),
        ("variants=[{name: Big B}]", "variants.0.name", "lower-case"),
        ("variants=[{name: a, set: {name: b}}]", "variants.0.set", "name or variants"),
    ],
)
def test_bad_protocol_fields_are_named(suite_files: tuple[Path, Path], override: str, field: str, message: str) -> None:
    with pytest.raises(SuiteError, match=message) as caught:
        load_suite(suite_files[0], [override])
    assert caught.value.field == field


def test_a_fedsgd_only_defense_is_refused_under_fedavg(suite_files: tuple[Path, Path], tmp_path: Path) -> None:
    path, plugin = suite_files
    arguments = ["--suite", str(path), "--plugin", str(plugin), "--out", str(tmp_path / "out"), "--no-progress"]
    dpsgd = "defenses=[{name: dpsgd, max_grad_norm: 1.0, noise_multiplier: 0.1}]"
    assert main([*arguments, "--variant", "fedavg-3", "--set", dpsgd]) == 2
    assert not (tmp_path / "out" / "fedavg-3" / "results.sqlite").exists()


def test_a_trained_stage_without_training_data_names_what_is_missing(
    suite_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The public split is missing: the run stops before any cell with the datamodule's own message, and says it is
    the victim's training data (not a checkpoint) that is missing."""
    monkeypatch.setenv("GGL_BENCH_CACHE", str(tmp_path / "cache"))
    path, plugin = suite_files
    plugin.write_text(
        plugin.read_text()
        + textwrap.dedent(
            """
            from ggl.data import DataNotFoundError


            class NoPublicSplit(ShippedSplit):
                def setup(self, stage=None) -> None:
                    if stage == "fit":
                        raise DataNotFoundError("put the public split in /data/tiny")
                    super().setup(stage)
                    self.public = None
            """
        )
    )
    arguments = ["--suite", str(path), "--plugin", str(plugin), "--out", str(tmp_path / "out"), "--no-progress"]
    datamodule = 'datamodule={name: "tiny_parts:NoPublicSplit", options: {image_size: 16}}'
    assert main([*arguments, "--variant", "trained-1", "--set", datamodule]) == 2
    error = capsys.readouterr().err
    assert "the victim's training data missing" in error and "put the public split in /data/tiny" in error
    assert "checkpoint" not in error
    assert not (tmp_path / "out" / "trained-1" / "results.sqlite").exists()


def test_the_realistic_track_runs_every_variant_and_tables_them(
    suite_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every variant becomes a leaderboard of its own (a custom victim and datamodule, B = 2 with matching,
    FedAvg, a trained stage cached by its hash), and ``axes.md`` sets them side by side."""
    path, plugin = suite_files
    monkeypatch.setenv("GGL_BENCH_CACHE", str(tmp_path / "cache"))
    out, report = tmp_path / "results", tmp_path / "board"
    arguments = ["--suite", str(path), "--plugin", str(plugin), "--out", str(out), "--report-dir", str(report)]
    assert main([*arguments, "--no-progress", "--no-tensorboard"]) == 0
    for variant in ("baseline", "batch-2", "fedavg-3", "trained-1"):
        assert (report / variant / "leaderboard.json").is_file()
    with ResultsStore(out / "batch-2" / "results.sqlite", readonly=True) as store:
        rows = store.cells("tiny-realistic.batch-2")
        assert {len(row.labels) for row in rows} == {2}
        assert all(row.images.shape == (2, 1, 16, 16) for row in rows if row.images.size)
    stage = json.loads((report / "trained-1" / "victim.json").read_text())
    assert stage["stage"] == "1 epoch" and 0.1 < stage["test_accuracy"] <= 1.0
    assert len(list((tmp_path / "cache" / "victims").glob("*.pt"))) == 1
    table = json.loads((report / "axes.json").read_text())
    assert [v["name"] for v in table["variants"]] == ["baseline", "batch-2", "fedavg-3", "trained-1"]
    assert [v["batch_size"] for v in table["variants"]] == [1, 2, 1, 1]
    assert table["variants"][2]["protocol"] == "FedAvg (3 steps, lr 0.1)"
    text = (report / "axes.md").read_text()
    for variant in table["variants"]:
        for defense, figure in variant["figures"].items():
            assert f"| {defense} |" in text and figure_text(figure) in text
    capsys.readouterr()
    assert main([*arguments, "--report-only"]) == 0  # rebuilt from the store, the table again
    assert json.loads((report / "axes.json").read_text()) == table


def test_figure_text() -> None:
    assert figure_text({"value": 4.0, "interval": [3.1, 4.93], "victims": 8}) == "+4.00 [+3.10, +4.93]"
    assert figure_text({"value": -1.5, "interval": None, "victims": 1}) == "-1.50"
    assert figure_text(None) == "n/a"


def test_the_suite_reader_knows_the_library_choices() -> None:
    """The suite is validated without torch, so its lists of protocols and optimisers are copies kept in step."""
    from benchmarks import config
    from ggl.fl import protocol, training

    assert config.UPDATE_ALGORITHMS == protocol.ALGORITHMS
    assert config.OPTIMIZERS == training.OPTIMIZERS
    assert asdict(config.TrainConfig()) == asdict(training.TrainingSpec(epochs=0))
