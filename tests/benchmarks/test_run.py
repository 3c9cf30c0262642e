"""The command line: the smoke suite end to end, regenerated reports, exit codes, resume after kill -9, workers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.cells import expand_cells
from benchmarks.config import load_suite
from benchmarks.report import REPORT_FILES
from benchmarks.run import main
from benchmarks.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
# One victim: still every attack against every defense family, references and utility costs included.
SMALL_SMOKE = ["--set", "victims.count=1"]
TINY = [
    "--set",
    "victims.count=2",
    "--set",
    "prior=null",
    "--set",
    "utility.enabled=false",
    "--set",
    "attacks=[{name: idlg, iterations: 2, max_iter: 3}, {name: dlg, iterations: 1, max_iter: 3}]",
    "--set",
    "defenses=[{name: none}, {name: gaussian, sigma: [0.01, 0.1]}]",
]


def snapshot(folder: Path) -> dict[str, bytes]:
    files = [*REPORT_FILES, *(f"grids/{p.name}" for p in (folder / "grids").glob("*.png"))]
    return {name: (folder / name).read_bytes() for name in files}


def run_smoke(tmp_path: Path, extra: list[str]) -> Path:
    out = tmp_path / "smoke"
    assert main(["--suite", "smoke", "--out", str(out), "--no-progress", *extra]) == 0
    suite = load_suite("smoke", extra[1::2])
    with ResultsStore(out / "results.sqlite") as store:
        rows = store.cells("smoke")
        assert len(rows) == len(expand_cells(suite))
        assert {r.attack["name"] for r in rows} >= {"dlg", "idlg", "inverting_gradients", "ggl"}
        assert {r.defense["name"] for r in rows if r.defense} == {d.name for d in suite.defenses}
        assert len(store.utilities()) == len(suite.defenses)
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert len(list((out / "grids").glob("*.png"))) == len(suite.defenses)
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    markdown = (out / "leaderboard.md").read_text()
    assert "prior only: class mean" in markdown and "PSNR above prior" in markdown
    before = snapshot(out)
    assert main(["--suite", "smoke", "--out", str(out), "--report-only", *extra]) == 0
    assert snapshot(out) == before  # byte-identical from the store alone
    return out


def test_smoke_suite_end_to_end_small(tmp_path: Path) -> None:
    run_smoke(tmp_path, SMALL_SMOKE)


@pytest.mark.slow
def test_smoke_suite_end_to_end_full(tmp_path: Path) -> None:
    start = time.process_time()  # CPU time: the bound holds on a dedicated 2-core machine, not a loaded one
    run_smoke(tmp_path, [])
    assert time.process_time() - start < 180


def test_bad_suite_file_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: bad\nattacks: [{name: idlg}]\ndefenses: [{name: none}]\nvictims: {count: -3}\n")
    assert main(["--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "bad.yaml" in error and "victims.count" in error and "positive integer" in error
    assert (
        main(["--suite", "smoke", "--set", "defenses=[{name: gaussian, sigma: -1}]", "--out", str(tmp_path / "o")]) == 2
    )
    assert "sigma" in capsys.readouterr().err
    assert main(["--suite", "smoke", "--set", "attacks.0.name=nope", "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "nope" in error and "allowed" in error
    assert main(["--suite", "no-such-suite"]) == 2
    assert "shipped suites" in capsys.readouterr().err


def test_damaged_or_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--suite", "smoke", "--out", str(tmp_path / "nothing"), "--report-only"]) == 2
    assert "no results store" in capsys.readouterr().err
    (tmp_path / "results.sqlite").write_bytes(b"garbage" * 1000)
    assert main(["--suite", "smoke", "--out", str(tmp_path), *TINY]) == 2
    assert "damaged" in capsys.readouterr().err


@pytest.mark.parametrize("suite", ["paper-celeba", "paper-imagenet"])
def test_paper_suites_say_what_is_missing(tmp_path: Path, suite: str, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    data_root = f"datamodule.options.data_root={tmp_path}"
    assert main(["--suite", suite, "--out", str(tmp_path), "--set", data_root]) == 2
    error = capsys.readouterr().err
    assert "missing" in error and "data" in error
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "results.sqlite").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen(
        _cli("--suite", "smoke", "--out", str(out), "--no-progress", *TINY),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store_path = out / "results.sqlite"
    deadline = time.monotonic() + 300
    count = 0
    while time.monotonic() < deadline and count < 5:
        time.sleep(0.2)
        if store_path.is_file():
            try:
                with sqlite3.connect(store_path, timeout=5) as connection:
                    count = connection.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
    process.send_signal(signal.SIGKILL)
    process.wait()
    with ResultsStore(store_path) as store:
        first = {(r.victim, r.defense_json, r.attack_json): r.metrics for r in store.cells("smoke")}
    total = len(expand_cells(load_suite("smoke", TINY[1::2])))
    assert 5 <= len(first) < total
    result = subprocess.run(
        _cli("--suite", "smoke", "--out", str(out), "--no-progress", *TINY),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(first)} already in the store, {total - len(first)} computed" in result.stderr
    with ResultsStore(store_path) as store:
        rows = store.cells("smoke")
    assert len(rows) == total == len({(r.victim, r.defense_json, r.attack_json) for r in rows})
    for r in rows:
        key = (r.victim, r.defense_json, r.attack_json)
        if key in first:
            assert r.metrics == first[key]


@pytest.mark.slow
def test_two_worker_processes_share_one_store(tmp_path: Path) -> None:
    out = tmp_path / "workers"
    result = subprocess.run(
        _cli("--suite", "smoke", "--out", str(out), "--devices", "2", "--no-progress", "--no-tensorboard", *TINY),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "[rank 0/2]" in result.stderr and "[rank 1/2]" in result.stderr
    with ResultsStore(out / "results.sqlite") as store:
        rows = store.cells("smoke")
    total = len(expand_cells(load_suite("smoke", TINY[1::2])))
    assert len(rows) == total == len({(r.victim, r.defense_json, r.attack_json) for r in rows})
    assert not list((out / "shards").glob("*.sqlite"))
    assert (out / "leaderboard.md").is_file()


RANK_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "GGL_RUN_ID",
    "TORCHELASTIC_RUN_ID",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_NTASKS",
    "SLURM_JOB_NAME",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_JOB_ID",
    "CUDA_VISIBLE_DEVICES",
)


def test_rank_detection_and_gpu_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.run import RankInfo, detect_rank, pin_gpu

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert detect_rank() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for name, value in (
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("GROUP_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "localhost"),
        ("MASTER_PORT", "29500"),
    ):
        monkeypatch.setenv(name, value)
    assert detect_rank() == RankInfo(3, 4, 1, "job29500")
    monkeypatch.setenv("GGL_RUN_ID", "local")
    assert detect_rank() == RankInfo(3, 4, 1, "local")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    pin_gpu(1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"


def test_shards_merge_without_duplicates(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks.run import merge_shards
    from benchmarks.store import CellRow, FailureRow

    def cell(victim: int) -> CellRow:
        return CellRow(
            suite="s",
            victim=victim,
            defense={"name": "none"},
            attack={"name": "idlg"},
            seed=0,
            kind="attack",
            defense_label="none",
            attack_label="iDLG",
            config_hash="c",
            code_version="v",
            seconds=1.0,
            evaluations=1,
            metrics={"psnr": float(victim)},
            labels=[0],
            images=np.zeros((1, 1, 2, 2), dtype=np.float32),
        )

    failure = FailureRow("s", 4, {"name": "none"}, {"name": "idlg"}, 0, "attack", "none", "iDLG", "c", "v", "slow")
    for rank, victims in ((0, [0, 1]), (1, [1, 2, 3])):
        with ResultsStore(tmp_path / "shards" / f"rank{rank}.sqlite") as shard:
            for victim in victims:
                shard.put_cell(cell(victim))
            shard.put_utility({"name": "none"}, {"seed": 0}, {"update_cosine": 1.0}, "c", "v", 1.0)
            if rank == 1:
                shard.put_failure(failure)
    with ResultsStore(tmp_path / "results.sqlite") as main_store:
        main_store.put_cell(cell(0))
    assert merge_shards(tmp_path) == 3
    with ResultsStore(tmp_path / "results.sqlite") as merged:
        assert sorted(r.victim for r in merged.cells("s")) == [0, 1, 2, 3]
        assert len(merged.utilities()) == 1
        assert [(f.victim, f.reason) for f in merged.failures("s")] == [(4, "slow")]
    assert not list((tmp_path / "shards").iterdir())


def test_single_process_resumes_from_leftover_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--suite", "smoke", "--out", str(out), "--no-progress", "--no-tensorboard", *TINY]) == 0
    total = len(expand_cells(load_suite("smoke", TINY[1::2])))
    (out / "shards").mkdir()
    (out / "results.sqlite").rename(out / "shards" / "rank0.sqlite")  # as an interrupted two-worker run leaves it
    for suffix in ("-wal", "-shm"):
        (out / f"results.sqlite{suffix}").unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["--suite", "smoke", "--out", str(out), "--no-progress", "--no-tensorboard", *TINY]) == 0
    assert f"{total} already in the store, 0 computed" in capsys.readouterr().err
    with ResultsStore(out / "results.sqlite") as store:
        assert store.count("smoke") == total


def test_references_only_computes_reference_rows_and_no_report(tmp_path: Path) -> None:
    out = tmp_path / "references"
    options = ["--no-progress", "--no-tensorboard", "--references-only"]
    assert main(["--suite", "smoke", "--out", str(out), *options, *TINY]) == 0
    with ResultsStore(out / "results.sqlite") as store:
        rows = store.cells("smoke")
        assert not store.utilities()
    assert len(rows) == 2 and {r.attack["name"] for r in rows} == {"reference:class-mean"}
    assert not (out / "leaderboard.md").exists()


def test_workers_reuse_utility_costs_of_the_main_store(tmp_path: Path) -> None:
    from benchmarks.run import _copy_cached_utility
    from benchmarks.store import STORE_NAME

    spec, options, metrics = {"name": "gaussian", "sigma": 0.1}, {"seed": 0}, {"update_cosine": 0.79}
    with ResultsStore(tmp_path / STORE_NAME) as main_store:
        main_store.put_utility(spec, options, metrics, "hash", "v1", 2.5)
    with ResultsStore(tmp_path / "rank0.sqlite") as shard_store:
        assert shard_store.utility(spec, options) is None
        _copy_cached_utility(tmp_path, shard_store)
        cached = shard_store.utility(spec, options)
    assert cached == {"metrics": metrics, "config_hash": "hash", "code_version": "v1"}


def test_visible_gpus_counts_device_files_and_cuda_visible_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.run import visible_gpus

    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).write_text("")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus(tmp_path) == 3
    for visible, count in (("0,2", 2), ("", 0), ("1,-1,2", 1), ("GPU-a,GPU-b,GPU-c,GPU-d", 3)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert visible_gpus(tmp_path) == count, visible
    assert visible_gpus(tmp_path / "no-such-folder") == 0


def test_devices_are_capped_by_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import benchmarks.run

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(benchmarks.run, "visible_gpus", lambda: 4)
    assert main(["--suite", "smoke", "--out", str(tmp_path / "o"), "--devices", "5"]) == 2
    assert "--devices 5: this machine has 4 visible GPUs (one worker each), so at most --devices 4" in (
        capsys.readouterr().err
    )
    monkeypatch.setattr(benchmarks.run, "visible_gpus", lambda: 0)
    cores = benchmarks.run.device_limit()[0]
    assert main(["--suite", "smoke", "--out", str(tmp_path / "o"), "--devices", str(cores + 1)]) == 2
    assert f"{cores} CPU core" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("platform", ["linux", "other"])
def test_a_worker_whose_launcher_is_gone_ends(platform: str) -> None:
    """The parent-death signal (Linux) or the polling thread (elsewhere) ends a worker whose launcher is gone."""
    code = (
        "import os, sys, time\n"
        f"sys.platform = sys.platform if {platform!r} == 'linux' else 'other'\n"
        "from benchmarks.run import end_with_launcher\n"
        "end_with_launcher(os.getppid() + 1_000_000)\n"  # not this process's parent: its launcher is gone
        "time.sleep(20)\n"
        "print('still running')\n"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM and "still running" not in done.stdout


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_launcher_and_watch_workers(tmp_path: Path, ready: Callable[[Path], bool], *extra: str) -> list[int]:
    """Start a 2-worker run, wait until ``ready(out)``, kill -9 the launcher; the workers still alive 30 s later."""
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        _cli("--suite", "smoke", "--out", str(out), "--devices", "2", "--no-progress", *TINY, *extra),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while (len(workers) < 2 or not ready(out)) and time.monotonic() < deadline and launcher.poll() is None:
            workers = _children(launcher.pid)
            time.sleep(0.1)
        assert len(workers) == 2, "the launcher did not start its two workers"
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [pid for pid in workers if _alive(pid)]
    finally:
        for pid in workers:  # only if the test failed: never leave a worker behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_their_launcher_is_killed(tmp_path: Path) -> None:
    from benchmarks.run import device_limit

    if device_limit()[0] < 2:
        pytest.skip("this machine allows one worker")
    assert _kill_launcher_and_watch_workers(tmp_path, lambda out: True) == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_computing_cells_end_when_their_launcher_is_killed(tmp_path: Path) -> None:
    """Killed while the workers are inside an attack's Lightning fit (Lightning's SIGTERM handler is active)."""
    from benchmarks.run import device_limit

    if device_limit()[0] < 2:
        pytest.skip("this machine allows one worker")
    shards = [f"shards/rank{rank}.sqlite" for rank in range(2)]
    seen: list[float] = []

    def in_their_cells(out: Path) -> bool:
        """Both shard stores exist (preflight done) since 15 s: the workers are inside a cell's fit."""
        if not seen and all((out / shard).is_file() for shard in shards):
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 15

    long_cells = ("--set", "attacks=[{name: inverting_gradients, iterations: 1000000}]")
    assert _kill_launcher_and_watch_workers(tmp_path, in_their_cells, *long_cells) == []
