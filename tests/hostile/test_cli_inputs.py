"""Hostile and malformed input to the command lines: every one exits 2 with a message naming the field, without a
traceback, without running code it names, and without writing anything (an existing results store keeps its bytes).

Families: output paths, file encodings and YAML bombs, types in every section and in datamodule / utility options,
``--set`` syntax, worker counts, prior checkpoints whose ``config`` is missing or wrong, and code that fails on
import. Inputs answered before the library loads ("fast") are also run in a fresh process to check that they never
import torch, Lightning or the harness; a few run as real commands to check the exit status and stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import claims, references, run, train_prior
from benchmarks.perf import cli as perf
from benchmarks.store import CellRow, ResultsStore

ROOT = Path(__file__).resolve().parents[2]
T = "<T>"
"""Placeholder for the sandbox folder in the argument lists below."""
CLIS: dict[str, Callable[[list[str]], int]] = {
    "run": run.main,
    "perf": perf.main,
    "references": references.main,
    "claims": claims.main,
    "train_prior": train_prior.main,
}
TINY = {
    "name": "tiny",
    "prior": None,
    "victims": {"count": 1},
    "utility": {"enabled": False},
    "references": {"class_mean": False},
    "attacks": [{"name": "idlg", "iterations": 1, "max_iter": 2}],
    "defenses": [{"name": "none"}],
}
EVIL = "import pathlib\npathlib.Path(__file__).with_name('EXECUTED').write_text('code ran')\n"
"""A module that leaves a file behind when it runs: the sandbox snapshot catches it."""
STORE = [f"--out={T}/store"]
"""Most cases point at a folder holding a store with one row: bad input must leave its bytes alone."""


def laughs(levels: int = 12) -> str:
    lines = ["  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "name: x\nattacks:\n- name: idlg\n" + "\n".join(lines) + "\ndefenses: [{name: none}]\n"


def alias_bomb(levels: int = 12) -> str:
    """One flow value whose aliases expand to 9 ** levels values (for ``--set``)."""
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def merge_bomb(levels: int = 30) -> str:
    lines = ["  m0: &m0 {a: 1, b: 2}"]
    lines += [f"  m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}" for i in range(1, levels)]
    return "name: x\nattacks:\n- name: idlg\n" + "\n".join(lines) + "\ndefenses: [{name: none}]\n"


def suite_text(**changes: object) -> str:
    return yaml.safe_dump({**TINY, **changes})


FILES: dict[str, str | bytes] = {
    "tiny.yaml": suite_text(),
    "latin1.yaml": "name: café\n".encode("latin-1") + suite_text().encode(),
    "utf16.yaml": suite_text().encode("utf-16"),
    "garbage.yaml": bytes(range(256)) * 4,
    "empty.yaml": "",
    "comments.yaml": "# nothing but a comment\n",
    "list.yaml": "- name: tiny\n- attacks: []\n",
    "scalar.yaml": "just a string\n",
    "broken.yaml": "name: [unclosed\n",
    "tabs.yaml": "name: x\n\tattacks: []\n",
    "big.yaml": "name: x\n" + "#" * (1 << 20) + "\n",
    "laughs.yaml": laughs(),
    "merge.yaml": merge_bomb(),
    "recursive.yaml": "name: x\nattacks: &a [{name: idlg, p: *a}]\ndefenses: [{name: none}]\n",
    "deep.yaml": "name: x\nattacks: [{name: idlg, p: " + "[" * 5000 + "]" * 5000 + "}]\ndefenses: [{name: none}]\n",
    "deep40.yaml": "name: x\nattacks: [{name: idlg, p: " + "[" * 40 + "]" * 40 + "}]\ndefenses: [{name: none}]\n",
    "sweep.yaml": "name: x\nattacks: [{name: idlg}]\ndefenses:\n- {name: gaussian, sigma: &l ["
    + ", ".join(str(i) for i in range(40))
    + "], a: *l, b: *l, c: *l, d: *l}\n",
    "seeds.yaml": suite_text(seeds=list(range(3000)), victims={"count": 500}),
    "python-tag.yaml": f"name: !!python/object/apply:os.system ['touch {T}/EXECUTED']\n",
    "int-keys.yaml": "name: x\n1: a\nnull: b\nattacks: [{name: idlg}]\ndefenses: [{name: none}]\n",
    "param-keys.yaml": "name: x\nattacks: [{name: idlg, 7: 8}]\ndefenses: [{name: none}]\n",
    "date.yaml": "name: x\nattacks: [{name: idlg, when: 2024-01-01}]\ndefenses: [{name: none}]\n",
    "evil.py": EVIL,
    "raising.py": "raise RuntimeError('this plugin breaks on import')\n",
    "exiting.py": "raise SystemExit(0)\n",
    "notpython.txt": "x = 1\n",
    "afile": "",
}


def write_checkpoints(folder: Path) -> None:
    """Prior checkpoints: a good one, and one for each way its ``config`` or weights can be wrong."""
    import torch

    from ggl.priors import DCGANConfig, DCGANGenerator

    config = DCGANConfig(latent_dim=8, num_classes=10, channels=1, image_size=8, width=8, embedding_dim=4)
    good = {"format": "ggl-dcgan-v1", "config": config.to_dict(), "state_dict": DCGANGenerator(config).state_dict()}
    variants = {
        "noconfig": {k: v for k, v in good.items() if k != "config"},
        "listconfig": {**good, "config": [8, 10]},
        "unknownconfig": {**good, "config": {**config.to_dict(), "depth": 3}},
        "typeconfig": {**good, "config": {**config.to_dict(), "latent_dim": "eight"}},
        "hugeconfig": {**good, "config": {**config.to_dict(), "width": 10**9}},
        "nostate": {k: v for k, v in good.items() if k != "state_dict"},
        "otherformat": {**good, "format": "pickle-me"},
    }
    for name, checkpoint in variants.items():
        torch.save(checkpoint, folder / f"{name}.pt")
    (folder / "junk.pt").write_bytes(b"PK\x03\x04 not a torch file")


def write_store(folder: Path) -> None:
    """A results store holding one row of the ``tiny`` suite."""
    row = CellRow(
        suite="tiny",
        victim=0,
        defense={"name": "none"},
        attack={"name": "idlg", "adaptive": True},
        seed=0,
        kind="attack",
        defense_label="none",
        attack_label="iDLG",
        config_hash="c",
        code_version="v",
        seconds=1.0,
        evaluations=1,
        metrics={"mse": 0.1, "psnr": 10.0, "ssim": 0.5},
        labels=[0],
        images=np.zeros((1, 1, 32, 32), dtype=np.float32),
    )
    folder.mkdir()
    with ResultsStore(folder / "results.sqlite") as store:
        store.put_cell(row)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, content in FILES.items():
        data = content.replace(T, str(folder)) if isinstance(content, str) else content
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
    (folder / "a-folder.yaml").mkdir()
    write_store(folder / "store")
    write_checkpoints(folder)
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its bytes (folders as ``dir``)."""
    return {
        str(path.relative_to(folder)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


def stored_rows(folder: Path) -> int:
    """Rows in the sandbox's store, read without writing (SQLite ``immutable``)."""
    uri = f"file:{folder / 'store' / 'results.sqlite'}?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM cells").fetchone()[0])


def tiny(*overrides: str) -> list[str]:
    """``--suite tiny.yaml`` with ``--set`` overrides, on the sandbox's store."""
    return ["--suite", f"{T}/tiny.yaml", *STORE, *(arg for text in overrides for arg in ("--set", text))]


def suite(name: str) -> list[str]:
    return ["--suite", f"{T}/{name}", *STORE]


# (id, command line, arguments, text the message must contain). Answered before torch is imported.
FAST: list[tuple[str, str, list[str], str]] = [
    # output paths
    ("out-is-a-file", "run", ["--suite", f"{T}/tiny.yaml", "--out", f"{T}/afile"], "--out"),
    ("out-under-a-file", "run", ["--suite", f"{T}/tiny.yaml", "--out", f"{T}/afile/results"], "--out"),
    ("out-read-only", "run", ["--suite", f"{T}/tiny.yaml", "--out", "/proc/ggl-results"], "--out"),
    ("report-dir-is-a-file", "run", [*tiny(), "--report-dir", f"{T}/afile"], "--report-dir"),
    ("report-dir-read-only", "run", [*tiny(), "--report-dir", "/proc/ggl-report"], "--report-dir"),
    ("report-dir-under-a-file", "run", [*tiny(), "--report-dir", f"{T}/afile/r"], "--report-dir"),
    ("report-only-dir-read-only", "run", [*tiny(), "--report-only", "--report-dir", "/proc/r"], "--report-dir"),
    ("report-only-out-a-file", "run", ["--suite", f"{T}/tiny.yaml", "--out", f"{T}/afile", "--report-only"], "--out"),
    ("plugin-missing", "run", [*tiny(), "--plugin", f"{T}/nope.py"], "--plugin"),
    ("plugin-not-python", "run", [*tiny(), "--plugin", f"{T}/notpython.txt"], "--plugin"),
    # files, encodings and YAML bombs
    ("suite-missing", "run", suite("missing.yaml"), "no such file"),
    ("suite-is-a-folder", "run", suite("a-folder.yaml"), "is a folder"),
    ("suite-device-file", "run", ["--suite", "/dev/zero", *STORE], "not a regular file"),
    ("suite-latin-1", "run", suite("latin1.yaml"), "not UTF-8"),
    ("suite-utf-16", "run", suite("utf16.yaml"), "not UTF-8"),
    ("suite-binary", "run", suite("garbage.yaml"), "not UTF-8"),
    ("suite-empty", "run", suite("empty.yaml"), "is empty"),
    ("suite-only-comments", "run", suite("comments.yaml"), "is empty"),
    ("suite-top-level-list", "run", suite("list.yaml"), "must be a mapping"),
    ("suite-top-level-scalar", "run", suite("scalar.yaml"), "must be a mapping"),
    ("suite-syntax-error", "run", suite("broken.yaml"), "not valid YAML"),
    ("suite-tabs", "run", suite("tabs.yaml"), "not valid YAML"),
    ("suite-over-1-mib", "run", suite("big.yaml"), "larger than"),
    ("billion-laughs", "run", suite("laughs.yaml"), "aliases expand"),
    ("merge-key-bomb", "run", suite("merge.yaml"), "aliases expand"),
    ("recursive-alias", "run", suite("recursive.yaml"), "recursive"),
    ("nesting-5000", "run", suite("deep.yaml"), "nest"),
    ("nesting-40", "run", suite("deep40.yaml"), "nested deeper"),
    ("sweep-product", "run", suite("sweep.yaml"), "defenses.0"),
    ("cells-product", "run", suite("seeds.yaml"), "victims.count"),
    ("python-tag", "run", suite("python-tag.yaml"), "python/object"),
    ("non-string-top-keys", "run", suite("int-keys.yaml"), "unknown field"),
    ("non-string-param-keys", "run", suite("param-keys.yaml"), "attacks.0.7"),
    ("date-parameter", "run", suite("date.yaml"), "attacks.0.when"),
    # types and names in datamodule and utility options
    ("image-size-abc", "run", tiny("datamodule.options.image_size=abc"), "datamodule.options.image_size"),
    ("image-size-huge", "run", tiny("datamodule.options.image_size=100000"), "datamodule.options.image_size"),
    ("image-size-bool", "run", tiny("datamodule.options.image_size=true"), "datamodule.options.image_size"),
    ("datamodule-unknown-option", "run", tiny("datamodule.options.colour=1"), "datamodule.options.colour"),
    ("datamodule-batch-size-float", "run", tiny("datamodule.options.batch_size=2.5"), "datamodule.options.batch"),
    ("datamodule-download-string", "run", tiny("datamodule.options.download=sometimes"), "options.download"),
    ("datamodule-options-list", "run", tiny("datamodule.options=[1, 2]"), "datamodule.options"),
    ("datamodule-unknown-name", "run", tiny("datamodule.name=cifar10"), "datamodule.name"),
    ("utility-unknown-option", "run", tiny("utility.enabled=true", "utility.options.epochs=3"), "utility.options.ep"),
    ("utility-steps-negative", "run", tiny("utility.options.steps=-5"), "utility.options.steps"),
    ("utility-lr-nan", "run", tiny("utility.options.lr=.nan"), "utility.options.lr"),
    ("utility-lr-text", "run", tiny("utility.options.lr=fast"), "utility.options.lr"),
    ("utility-victim-number", "run", tiny("utility.options.cosine_victim=7"), "utility.options.cosine_victim"),
    # every other section with a wrong type or value
    ("name-number", "run", tiny("name=123"), "name"),
    ("name-path", "run", tiny("name=../../etc"), "name"),
    ("description-list", "run", tiny("description=[1]"), "description"),
    ("model-scalar", "run", tiny("model=5"), "model"),
    ("model-seed-text", "run", tiny("model.seed=abc"), "model.seed"),
    ("model-seed-huge", "run", tiny("model.seed=99999999999999999999999"), "model.seed"),
    ("prior-number", "run", tiny("prior=3"), "prior"),
    ("victims-count-zero", "run", tiny("victims.count=0"), "victims.count"),
    ("victims-count-negative", "run", tiny("victims.count=-3"), "victims.count"),
    ("victims-count-inf", "run", tiny("victims.count=1e400"), "victims.count"),
    ("victims-count-huge", "run", tiny("victims.count=99999999999999999999"), "victims.count"),
    ("victims-batch-text", "run", tiny("victims.batch_size=abc"), "victims.batch_size"),
    ("victims-seed-negative", "run", tiny("victims.seed=-1"), "victims.seed"),
    ("seeds-empty", "run", tiny("seeds=[]"), "seeds"),
    ("seeds-repeated", "run", tiny("seeds=[1, 1]"), "seeds"),
    ("seeds-nan", "run", tiny("seeds=[.nan]"), "seeds"),
    ("seeds-huge", "run", tiny("seeds=[99999999999999999999]"), "seeds"),
    ("adaptive-text", "run", tiny("adaptive=maybe"), "adaptive"),
    ("attacks-mapping", "run", tiny("attacks={name: idlg}"), "attacks"),
    ("attacks-empty", "run", tiny("attacks=[]"), "attacks"),
    ("attacks-number", "run", tiny("attacks=[3]"), "attacks.0"),
    ("attack-without-name", "run", tiny("attacks=[{iterations: 3}]"), "attacks.0.name"),
    ("attack-with-seed", "run", tiny("attacks.0.seed=3"), "attacks.0.seed"),
    ("attack-reserved-name", "run", tiny("attacks.0.name=reference:class-mean"), "attacks.0.name"),
    ("attacks-duplicated", "run", tiny("attacks=[{name: idlg}, {name: idlg}]"), "attacks.1"),
    ("defenses-text", "run", tiny("defenses=gaussian"), "defenses"),
    ("defense-empty-sweep", "run", tiny("defenses=[{name: gaussian, sigma: []}]"), "defenses.0.sigma"),
    ("defenses-duplicated", "run", tiny("defenses=[{name: none}, {name: none}]"), "defenses"),
    ("references-negative", "run", tiny("references.ceiling_steps=-1"), "references.ceiling_steps"),
    ("references-lr-inf", "run", tiny("references.ceiling_lr=.inf"), "references.ceiling_lr"),
    ("references-flag-text", "run", tiny("references.class_mean=maybe"), "references.class_mean"),
    ("utility-enabled-number", "run", tiny("utility.enabled=1"), "utility.enabled"),
    ("requires-files-text", "run", tiny("requires.files=data"), "requires.files"),
    ("requires-gpu-text", "run", tiny("requires.gpu=perhaps"), "requires.gpu"),
    ("unknown-top-level-field", "run", tiny("budget=3"), "budget"),
    # --set syntax
    ("set-without-equals", "run", tiny("victims.count"), "key=value"),
    ("set-empty-key", "run", tiny("=3"), "empty key"),
    ("set-bad-yaml", "run", tiny("victims.count=["), "not valid YAML"),
    ("set-index-out-of-range", "run", tiny("attacks.99.iterations=1"), "attacks.99"),
    ("set-index-not-a-number", "run", tiny("attacks.1e9.iterations=1"), "attacks.1e9"),
    ("set-inside-a-number", "run", tiny("victims.count.x=1"), "victims.count.x"),
    ("set-unknown-field", "run", tiny("budgets=1"), "budgets"),
    ("set-too-many-parts", "run", tiny("victims" + ".x" * 40 + "=1"), "dotted parts"),
    ("set-alias-bomb", "run", tiny("attacks.0.p=" + alias_bomb()), "aliases expand"),
    ("set-python-tag", "run", tiny(f"attacks.0=!!python/object/apply:os.system ['touch {T}/EXECUTED']"), "python"),
    # worker counts
    ("devices-zero", "run", [*tiny(), "--devices", "0"], "--devices"),
    ("devices-negative", "run", [*tiny(), "--devices", "-1"], "--devices"),
    ("devices-above-the-machine", "run", [*tiny(), "--devices", "999"], "at most --devices"),
    ("num-nodes-zero", "run", [*tiny(), "--num-nodes", "0"], "--num-nodes"),
    ("num-nodes-without-launcher", "run", [*tiny(), "--num-nodes", "2"], "--num-nodes"),
    ("devices-text", "run", [*tiny(), "--devices", "many"], "--devices"),
    ("cell-seconds-zero", "run", [*tiny(), "--cell-seconds", "0"], "--cell-seconds"),
    ("cell-seconds-nan", "run", [*tiny(), "--cell-seconds", "nan"], "--cell-seconds"),
    ("cell-seconds-text", "run", [*tiny(), "--cell-seconds", "soon"], "--cell-seconds"),
    # the other command lines
    ("perf-out-read-only", "perf", ["--out", "/proc/ggl-perf.json"], "--out"),
    ("perf-out-a-folder", "perf", ["--out", T], "--out"),
    ("perf-population-huge", "perf", ["--population", "99999999", "--out", f"{T}/p.json"], "--population"),
    ("perf-victim-unknown", "perf", ["--victim", "vgg", "--out", f"{T}/p.json"], "--victim"),
    ("perf-max-seconds-nan", "perf", ["--max-seconds", "nan", "--out", f"{T}/p.json"], "--max-seconds"),
    ("references-json-read-only", "references", ["--suite", f"{T}/tiny.yaml", "--json", "/proc/x.json"], "--json"),
    ("references-victims-zero", "references", ["--suite", f"{T}/tiny.yaml", "--victims", "0"], "--victims"),
    ("references-no-ceiling", "references", ["--suite", f"{T}/tiny.yaml", "--store", f"{T}/store"], "ceiling"),
    ("references-bad-suite", "references", ["--suite", f"{T}/laughs.yaml"], "aliases expand"),
    ("claims-table-under-a-file", "claims", ["--store", f"{T}/store", "--table", f"{T}/afile/t.md"], "--table"),
    ("claims-seed-negative", "claims", ["--store", f"{T}/store", "--seed", "-1"], "--seed"),
    ("train-prior-out-read-only", "train_prior", ["--data", "fashion-mnist", "--out", "/proc/p.pt"], "--out"),
    ("train-prior-lr-nan", "train_prior", ["--data", "fashion-mnist", "--out", f"{T}/p.pt", "--lr", "nan"], "--lr"),
    ("train-prior-celeba-no-root", "train_prior", ["--data", "celeba", "--out", f"{T}/p.pt"], "--data-root"),
]

# Answered by the preflight, after the library loads but before any cell, store or report.
PREFLIGHT: list[tuple[str, str, list[str], str]] = [
    ("prior-config-missing", "run", tiny(f"prior={T}/noconfig.pt"), "field 'config' is missing"),
    ("prior-config-a-list", "run", tiny(f"prior={T}/listconfig.pt"), "field 'config' is a list"),
    ("prior-config-unknown-field", "run", tiny(f"prior={T}/unknownconfig.pt"), "config.depth"),
    ("prior-config-wrong-type", "run", tiny(f"prior={T}/typeconfig.pt"), "config.latent_dim"),
    ("prior-config-huge", "run", tiny(f"prior={T}/hugeconfig.pt"), "state_dict."),
    ("prior-state-missing", "run", tiny(f"prior={T}/nostate.pt"), "state_dict"),
    ("prior-other-format", "run", tiny(f"prior={T}/otherformat.pt"), "ggl-dcgan-v1"),
    ("prior-not-torch", "run", tiny(f"prior={T}/junk.pt"), "could not be read"),
    ("plugin-raises-on-import", "run", [*tiny(), "--plugin", f"{T}/raising.py"], "importing it failed"),
    ("plugin-exits-on-import", "run", [*tiny(), "--plugin", f"{T}/exiting.py"], "importing it failed"),
    ("defense-from-a-file", "run", tiny(f"defenses=[{{name: '{T}/evil.py:Evil'}}]"), "--plugin"),
    ("defense-from-os", "run", tiny("defenses=[{name: 'os:system'}]"), "os:system"),
    ("defense-missing-module", "run", tiny("defenses=[{name: 'ggl.nosuch:X'}]"), "ggl.nosuch"),
    ("attack-unknown-parameter", "run", tiny("attacks.0.colour=3"), "attacks (iDLG)"),
    ("victim-model-unknown", "run", tiny("model.name=vgg"), "model"),
    ("victims-more-than-the-data", "run", tiny("victims.count=5000"), "victims"),
    ("utility-victim-unknown", "run", tiny("utility.enabled=true", "utility.options.cosine_victim=vgg"), "utility"),
]


def resolve(arguments: list[str], folder: Path) -> list[str]:
    return [argument.replace(T, str(folder)) for argument in arguments]


def exit_status(cli: str, arguments: list[str]) -> int:
    """The command line's status; argparse's own refusals (``SystemExit(2)``) count as returned."""
    try:
        return CLIS[cli](arguments)
    except SystemExit as error:
        return int(error.code or 0)


def check_refused(
    cli: str, arguments: list[str], expected: str, sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(sandbox)
    status = exit_status(cli, resolve(arguments, sandbox))
    error = capsys.readouterr().err
    assert status == 2, error
    assert expected.replace(T, str(sandbox)) in error, error
    assert "Traceback" not in error, error
    assert snapshot(sandbox) == before  # nothing written, no code run, the store's bytes untouched
    assert stored_rows(sandbox) == 1


@pytest.mark.parametrize(("cli", "arguments", "expected"), [case[1:] for case in FAST], ids=[c[0] for c in FAST])
def test_bad_input_exits_2_before_any_work(
    cli: str, arguments: list[str], expected: str, sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_refused(cli, arguments, expected, sandbox, capsys)


@pytest.mark.parametrize(
    ("cli", "arguments", "expected"), [case[1:] for case in PREFLIGHT], ids=[c[0] for c in PREFLIGHT]
)
def test_bad_input_found_by_the_preflight_exits_2(
    cli: str, arguments: list[str], expected: str, sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_refused(cli, arguments, expected, sandbox, capsys)


PROBE = """
import json, sys, time
from benchmarks import claims, references, run, train_prior
from benchmarks.perf import cli as perf
clis = {"run": run.main, "perf": perf.main, "references": references.main, "claims": claims.main,
        "train_prior": train_prior.main}
heavy = ("torch", "pytorch_lightning", "lightning_fabric", "benchmarks.harness", "ggl.attacks")
results = []
for name, cli, arguments in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        status = clis[cli](arguments)
    except SystemExit as error:
        status = error.code
    results.append([name, status, time.perf_counter() - start, [m for m in heavy if m in sys.modules]])
print(json.dumps(results))
"""


def test_fast_inputs_import_no_library(sandbox: Path) -> None:
    """Every input error of ``FAST`` is answered in a fresh process without torch, Lightning or the harness."""
    cases = [[name, cli, resolve(arguments, sandbox)] for name, cli, arguments, _ in FAST]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
        check=True,
    )
    results = json.loads(done.stdout.splitlines()[-1])
    assert [(name, status, heavy) for name, status, _, heavy in results] == [(c[0], 2, []) for c in FAST]
    assert max(seconds for _, _, seconds, _ in results) < 3.0  # measured: 0.02 s at most (a command: 0.2 s)


@pytest.mark.parametrize(
    "name", ["out-is-a-file", "suite-latin-1", "billion-laughs", "devices-above-the-machine", "image-size-abc"]
)
def test_as_a_real_command(name: str, sandbox: Path) -> None:
    """The command itself: status 2, one line on stderr naming the problem, no traceback."""
    _, cli, arguments, expected = next(case for case in FAST if case[0] == name)
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{cli}", *resolve(arguments, sandbox)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and expected in done.stderr and "Traceback" not in done.stderr
