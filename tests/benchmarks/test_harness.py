"""Harness: real tiny cells, resume after an interruption, failures, time limits, claims, same key same numbers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import benchmarks.harness
from benchmarks.cells import expand_cells
from benchmarks.config import SuiteError, build_suite
from benchmarks.harness import Harness
from benchmarks.report import write_report
from benchmarks.store import ClaimOwner, ResultsStore, StoreError
from ggl.io import canonical_json

SUITE = {
    "name": "tiny",
    "datamodule": {"name": "embedded"},
    "model": {"name": "lenet", "seed": 0},
    "prior": None,
    "victims": {"count": 2, "seed": 0, "batch_size": 1},
    "seeds": [0],
    "references": {"class_mean": True},
    "utility": {"enabled": True},
    "attacks": [{"name": "idlg", "iterations": 2, "max_iter": 3}, {"name": "dlg", "iterations": 1, "max_iter": 3}],
    "defenses": [{"name": "none"}, {"name": "gaussian", "sigma": [0.01, 0.1]}],
    "controls": False,  # resume, failures and limits are about cells of any kind; controls have their own test
}


def utility_from_update(spec: dict[str, Any], seed: int) -> dict[str, float]:
    """A small real utility measure for tests: cosine between a random update and its defended version."""
    from ggl.defenses import make_defense
    from ggl.fl import SharedUpdate

    generator = torch.Generator().manual_seed(seed)
    update = SharedUpdate((torch.randn(100, generator=generator),), 1)
    defended = make_defense(**spec)(update, generator=generator)
    cosine = torch.nn.functional.cosine_similarity(update.flat(), defended.flat(), dim=0)
    return {"update_cosine": float(cosine), "accuracy_drop": 0.0}


class CountingAttacks:
    """``make_attack`` that counts calls and can interrupt (KeyboardInterrupt, like Ctrl-C) or fail at a call."""

    def __init__(self, interrupt_at: int | None = None, fail_name: str | None = None) -> None:
        self.calls: list[str] = []
        self.interrupt_at = interrupt_at
        self.fail_name = fail_name

    def __call__(self, name: str, **params: Any) -> Any:
        from ggl.attacks import make_attack

        self.calls.append(name)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if name == self.fail_name:
            raise RuntimeError("attack exploded")
        return make_attack(name, **params)


@pytest.fixture(autouse=True)
def small_utility(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's utility cost replaced by the small measure above (the real one has its own tests)."""
    monkeypatch.setattr(benchmarks.harness, "utility_cost", utility_from_update)


def harness(tmp_path: Path, suite: dict | None = None) -> Harness:
    config = build_suite(suite or SUITE, "tiny.yaml")
    store = ResultsStore(tmp_path / "results.sqlite")
    return Harness(config, store, progress=False, log=lambda message: None)


def counting(monkeypatch: pytest.MonkeyPatch, **options: Any) -> CountingAttacks:
    """Route the harness's ``make_attack`` through a ``CountingAttacks`` (preflight is not run in these tests)."""
    attacks = CountingAttacks(**options)
    monkeypatch.setattr(benchmarks.harness, "make_attack", attacks)
    return attacks


def test_resume_after_interruption_no_loss_no_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting(monkeypatch, interrupt_at=4)
    first = harness(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    stored = {(c.victim, c.defense_json, c.attack_json, c.seed): c for c in first.store.cells("tiny")}
    total = len(expand_cells(first.suite))
    # victim 0: its reference row; per setting a label reference and two attacks; the fourth make_attack
    # call (the second setting's second attack) interrupted
    assert len(stored) == 6
    first.store.close()

    attacks = counting(monkeypatch)
    second = harness(tmp_path)
    summary = second.run()
    assert summary.skipped == 6 and summary.computed == total - 6 and not summary.failed
    attack_cells = sum(1 for cell in expand_cells(second.suite) if cell.kind == "attack")
    assert len(attacks.calls) == attack_cells - 3  # finished cells were not recomputed
    rows = second.store.cells("tiny")
    assert len(rows) == total
    assert len({(r.victim, r.defense_json, r.attack_json, r.seed) for r in rows}) == total
    for r in rows:  # rows of the first run are untouched
        key = (r.victim, r.defense_json, r.attack_json, r.seed)
        if key in stored:
            assert (r.images == stored[key].images).all() and r.metrics == stored[key].metrics
    utilities = second.store.utilities()
    assert len(utilities) == 3
    assert min(u["metrics"]["update_cosine"] for u in utilities.values()) < 0.999


def test_failed_cells_are_listed_and_others_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting(monkeypatch, fail_name="dlg")
    run = harness(tmp_path)
    summary = run.run()
    assert len(summary.failed) == 2 * 3
    assert all("DLG" in what and "attack exploded" in why for what, why in summary.failed)
    assert summary.computed == len(expand_cells(run.suite)) - 6
    failures = run.store.failures("tiny")  # recorded with their reasons, for the report
    assert len(failures) == 6 and all(f.reason == "RuntimeError: attack exploded" for f in failures)
    run.store.close()
    counting(monkeypatch)
    retry = harness(tmp_path)
    summary = retry.run()
    assert summary.computed == 6 and not summary.failed
    assert retry.store.failures("tiny") == [] and retry.store.claims() == []  # cleared by the rows


def test_same_key_gives_the_same_numbers(tmp_path: Path) -> None:
    suite = {
        **SUITE,
        "victims": {"count": 1},
        "defenses": [{"name": "gaussian", "sigma": 0.01}],
        "references": {"class_mean": False},
    }
    a = harness(tmp_path / "a", suite)
    b = harness(tmp_path / "b", suite)
    a.run()
    b.run()
    rows_a, rows_b = a.store.cells("tiny"), b.store.cells("tiny")
    assert [r.metrics for r in rows_a] == [r.metrics for r in rows_b]
    assert all((x.images == y.images).all() for x, y in zip(rows_a, rows_b))


def test_class_mean_reference_scores_the_class_mean(tmp_path: Path) -> None:
    from ggl.metrics import reconstruction_metrics

    run = harness(
        tmp_path,
        {**SUITE, "attacks": [{"name": "idlg", "iterations": 1, "max_iter": 1}], "defenses": [{"name": "none"}]},
    )
    run.run()
    rows = run.store.cells("tiny")
    references = [r for r in rows if r.kind == "reference" and r.defense is None]
    assert len(references) == 2
    per_setting = [r for r in rows if r.kind == "reference" and r.defense is not None]
    # without a defense the label inferred from the defended update is the clean one: the same image
    assert [r.metrics for r in per_setting] == [r.metrics for r in references]
    datamodule = run.datamodule()
    for reference, victim in zip(references, run.store.victims("tiny")):
        assert reference.labels == victim.labels  # iDLG's rule recovers a single label exactly
        expected = reconstruction_metrics(datamodule.class_means()[victim.labels], torch.as_tensor(victim.images))
        assert reference.metrics["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)
        assert 8.0 < reference.metrics["psnr"] < 30.0


def test_references_only_computes_no_attack_and_no_utility(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attacks = counting(monkeypatch)
    config = build_suite(SUITE, "tiny.yaml")
    run = Harness(config, ResultsStore(tmp_path / "results.sqlite"), progress=False, references_only=True)
    summary = run.run()
    assert summary.total == summary.computed == 2 and not attacks.calls
    assert {r.kind for r in run.store.cells("tiny")} == {"reference"} and not run.store.utilities()


def test_preflight_names_bad_defense_and_attack_parameters(tmp_path: Path) -> None:
    from benchmarks.config import SuiteError

    bad_defense = harness(tmp_path / "d", {**SUITE, "defenses": [{"name": "gaussian", "sigma": -1.0}]})
    with pytest.raises(SuiteError, match="defenses"):
        bad_defense.preflight()
    bad_attack = harness(tmp_path / "a", {**SUITE, "attacks": [{"name": "idlg", "iterations": -2}]})
    with pytest.raises(SuiteError, match=r"attacks \(iDLG\)"):
        bad_attack.preflight()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"utility": {"enabled": True, "options": {"cosine_victim": "vgg"}}}, "utility.options"),
        ({"victims": {"count": 5000}}, "victims"),
        ({"model": {"name": "vgg"}}, "model"),
        ({"prior": "no-such-prior"}, "prior"),
    ],
)
def test_preflight_names_what_only_the_library_can_check(tmp_path: Path, change: dict, field: str) -> None:
    from benchmarks.config import SuiteError

    with pytest.raises(SuiteError) as caught:
        harness(tmp_path, {**SUITE, **change}).preflight()
    assert caught.value.field == field


def test_a_store_refuses_a_different_victim_setup(tmp_path: Path) -> None:
    run = harness(
        tmp_path,
        {
            **SUITE,
            "defenses": [{"name": "none"}],
            "attacks": [{"name": "idlg", "iterations": 1}],
            "victims": {"count": 1},
        },
    )
    run.run()
    changed = build_suite({**SUITE, "victims": {"count": 1, "batch_size": 2}}, "tiny.yaml")
    with pytest.raises(StoreError, match="victims"):
        Harness(changed, run.store, progress=False).run()


class TinyAttack:
    """A stand-in for an attack, without Lightning: a grey image after ``sleep`` seconds."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep

    def reconstruct(self, target: Any, **options: Any) -> Any:
        from ggl.attacks import Reconstruction

        time.sleep(self.sleep)
        return Reconstruction(torch.full((1, *target.image_shape), 0.5), torch.zeros(1, dtype=torch.long), [], 1, 0.0)


def tiny_attacks(monkeypatch: pytest.MonkeyPatch, sleeps: dict[str, float] | None = None) -> None:
    """Route the harness's ``make_attack`` to ``TinyAttack``s (``sleeps``: seconds by attack name)."""
    sleeps = sleeps or {}
    monkeypatch.setattr(benchmarks.harness, "make_attack", lambda **params: TinyAttack(sleeps.get(params["name"], 0)))


def test_a_cell_past_its_time_limit_fails_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_attacks(monkeypatch, {"dlg": 60.0})
    suite = {**SUITE, "victims": {"count": 1}, "defenses": [{"name": "none"}]}
    config = build_suite(suite, "tiny.yaml")
    run = Harness(config, ResultsStore(tmp_path / "results.sqlite"), progress=False, log=lambda m: None, cell_seconds=1)
    start = time.perf_counter()
    summary = run.run()
    assert time.perf_counter() - start < 30
    limit = "CellTimeout: the cell ran longer than the per-cell time limit of 1 s"
    assert [why for _, why in summary.failed] == [limit]
    assert summary.computed == len(expand_cells(config)) - 1
    [failure] = run.store.failures("tiny")
    assert failure.attack_label == "DLG" and failure.reason.startswith("CellTimeout")
    write_report(run.store, tmp_path / "report", config)
    markdown = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "## Failed cells" in markdown and "| none | DLG | 0 | 0 | CellTimeout: the cell ran longer" in markdown


def test_two_runs_on_one_store_compute_each_cell_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_attacks(monkeypatch, {"idlg": 0.05, "dlg": 0.05})
    monkeypatch.setattr(benchmarks.harness, "CLAIM_POLL_SECONDS", 0.05)
    computed: list[tuple] = []
    compute = Harness.compute

    def counted(self: Harness, cells: Any) -> Any:
        computed.extend(cell.key() for cell in cells)
        return compute(self, cells)

    monkeypatch.setattr(Harness, "compute", counted)
    config = build_suite(SUITE, "tiny.yaml")
    summaries = []

    def one_run() -> None:
        with ResultsStore(tmp_path / "results.sqlite") as store:
            summaries.append(Harness(config, store, progress=False, log=lambda m: None).run())

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [cell.key() for cell in expand_cells(config)]
    assert sorted(computed) == sorted(keys)  # every cell once: none twice, none lost
    assert sum(s.computed for s in summaries) == len(keys) and not any(s.failed for s in summaries)
    assert all(s.computed > 0 for s in summaries)  # the two runs shared the work
    with ResultsStore(tmp_path / "results.sqlite") as store:
        assert store.finished_keys("tiny") == set(keys) and store.count("tiny") == len(keys)
        assert store.claims() == []


def test_claims_of_a_killed_run_are_taken_over_and_live_ones_awaited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    tiny_attacks(monkeypatch)
    monkeypatch.setattr(benchmarks.harness, "CLAIM_POLL_SECONDS", 0.05)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    killed = ClaimOwner("killed", process.pid, ClaimOwner.new().host)  # as after kill -9: claims stay, pid is gone
    live = ClaimOwner.new()
    run = harness(tmp_path)
    cells = expand_cells(run.suite)
    for cell in cells[:-1]:
        assert run.store.take_claim("tiny", cell.key(), killed) is None
    assert run.store.take_claim("tiny", cells[-1].key(), live) is None
    release = threading.Timer(0.5, lambda: ResultsStore(tmp_path / "results.sqlite").release_claims(live))
    release.start()
    messages: list[str] = []
    run.log = messages.append
    summary = run.run()
    release.join()
    assert summary.computed == len(cells) and not summary.failed
    assert "waiting for 1 cells another run on this store is computing" in messages
    assert run.store.count("tiny") == len(cells) and run.store.claims() == []


def test_the_report_shows_the_configuration_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_attacks(monkeypatch)

    def utility(spec: dict, seed: int, steps: int = 1) -> dict[str, float]:
        return {"update_cosine": steps / 10, "accuracy_drop": 0.0}

    monkeypatch.setattr(benchmarks.harness, "utility_cost", utility)
    small = {**SUITE, "victims": {"count": 1}, "defenses": [{"name": "gaussian", "sigma": 0.1}]}
    old = build_suite({**small, "utility": {"options": {"steps": 3}}}, "tiny.yaml")
    new = build_suite(
        {**small, "attacks": [{"name": "idlg", "iterations": 5, "max_iter": 3}], "utility": {"options": {"steps": 7}}},
        "tiny.yaml",
    )
    store = ResultsStore(tmp_path / "results.sqlite")
    for config in (old, new):  # a rerun with other budgets and utility options into the same store
        assert not Harness(config, store, progress=False, log=lambda m: None).run().failed
    write_report(store, tmp_path / "new", new)
    rows = (tmp_path / "new" / "rows.csv").read_text().splitlines()
    assert len(rows) == 1 + len(expand_cells(new)) and all('""iterations"":2' not in line for line in rows)
    markdown = (tmp_path / "new" / "leaderboard.md").read_text()
    assert "| 1 | gaussian(sigma=0.1) | 0.700 |" in markdown  # the current utility options' cost, not 0.300
    assert "2 stored rows of this suite belong to another configuration" in markdown
    write_report(store, tmp_path / "old", old)
    assert "| 1 | gaussian(sigma=0.1) | 0.300 |" in (tmp_path / "old" / "leaderboard.md").read_text()


def test_a_run_where_every_cell_fails_still_writes_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting(monkeypatch, fail_name="idlg")
    suite = {**SUITE, "attacks": [{"name": "idlg"}], "references": {"class_mean": False}, "utility": {"enabled": False}}
    config = build_suite(suite, "tiny.yaml")
    run = Harness(config, ResultsStore(tmp_path / "results.sqlite"), progress=False, log=lambda m: None)
    summary = run.run()
    assert summary.computed == 0 and len(summary.failed) == len(expand_cells(config))
    write_report(run.store, tmp_path / "report", config)
    markdown = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "**Every cell failed**" in markdown
    for label in ("none", "gaussian(sigma=0.01)", "gaussian(sigma=0.1)"):  # every defense shown, unranked
        row = next(line for line in markdown.splitlines() if f"| {label} |" in line)
        assert row.startswith(f"| - | - | {label} |") and "all cells failed" in row
    assert markdown.count("RuntimeError: attack exploded") == len(expand_cells(config))


BATCHED = {
    **SUITE,
    "victims": {"count": 2, "seed": 0, "batch_size": 1},
    "attacks": [
        {"name": "idlg", "iterations": 2, "max_iter": 3},
        {"name": "ggl", "prior": "fashion-mnist-wgan", "search": "cma", "budget": 20, "population": 10},
        {"name": "ggl", "prior": "fashion-mnist-wgan", "search": "adam", "budget": 4, "population": 2},
    ],
    "defenses": [{"name": "none"}, {"name": "sparsification", "ratio": 0.9}],
    "controls": True,
    "batch_controls": True,
}


def _metrics(store: ResultsStore) -> dict[Any, tuple[dict[str, float], list[int]]]:
    return {row.key: (row.metrics, row.labels) for row in store.cells("tiny")}


def test_batched_controls_run_with_their_attacks_whichever_a_run_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``batch_controls``: each attack cell and its control are one ``reconstruct_together`` (one attack built per
    pair; GGL-Adam, a gradient search, runs its two apart), on one rank when sharded; a run that needs only the
    control still computes the pair, so its row is the one the whole run stores, and the rows of two ranks are the
    rows of one."""
    attacks = counting(monkeypatch)
    config = build_suite(BATCHED, "tiny.yaml")
    whole = Harness(config, ResultsStore(tmp_path / "whole.sqlite"), progress=False, log=lambda m: None)
    summary = whole.run()
    assert summary.computed == len(expand_cells(config)) and not summary.failed
    per_setting = ["idlg", "ggl", "ggl", "ggl"]  # iDLG and GGL-CMA with their controls, GGL-Adam and its control
    assert attacks.calls == per_setting * 4  # 2 victims x 2 settings
    rows = _metrics(whole.store)
    controls = [row for row in whole.store.cells("tiny") if row.kind == "control"]
    assert len(controls) == 12 and all(rows[c.key][0]["psnr"] != rows[_attack_key(c)][0]["psnr"] for c in controls)

    resumed = ResultsStore(tmp_path / "resumed.sqlite")
    resumed.claim_context("tiny", config.context())
    resumed.put_cells([row for row in whole.store.cells("tiny") if row.kind != "control"])
    summary = Harness(config, resumed, progress=False, log=lambda m: None).run()
    assert summary.computed == 12 and attacks.calls == per_setting * 4 + ["idlg", "ggl", "ggl"] * 4
    assert _metrics(resumed) == rows

    sharded = []
    for rank in range(2):
        run = Harness(
            config, ResultsStore(tmp_path / f"rank{rank}.sqlite"), rank, 2, progress=False, log=lambda m: None
        )
        kinds = {(c.victim, c.defense_json, c.kind) for c in run.cells() if c.kind != "reference"}
        assert all((v, d, "control") in kinds for v, d, kind in kinds if kind == "attack")
        run.run()
        sharded.append(_metrics(run.store))
    assert {**sharded[0], **sharded[1]} == rows and not set(sharded[0]) & set(sharded[1])


def _attack_key(control: Any) -> Any:
    """The key of the attack cell a control row belongs to."""
    victim, defense, attack, seed = control.key
    return victim, defense, canonical_json({k: v for k, v in json.loads(attack).items() if k != "control"}), seed


def test_batch_controls_need_controls() -> None:
    with pytest.raises(SuiteError, match="'batch_controls': needs controls: true"):
        build_suite({**BATCHED, "controls": False}, "tiny.yaml")
