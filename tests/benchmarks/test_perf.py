"""The perf CLI at a tiny size: JSON fields, Markdown table, and serial and batched losses that agree."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.perf.cli import main

FIELDS = {
    "victim",
    "image_size",
    "population",
    "device",
    "engine",
    "candidates_per_s",
    "serial_candidates_per_s",
    "speedup",
    "limit_share",
    "peak_memory_mib",
    "flops_per_candidate",
}


def test_perf_cli_tiny_run(tmp_path):
    out = tmp_path / "perf.json"
    argv = [
        "--victim", "lenet", "--image-size", "8", "--channels", "1", "--population", "3", "--repeats", "1",
        "--engines", "vmap,hooks,inner,auto", "--e2e-victim", "lenet", "--e2e-budget", "6", "--e2e-population", "3",
        "--e2e-engines", "vmap,hooks,inner,auto", "--adaptive-victim", "lenet", "--adaptive-population", "3",
        "--defenses", "clipping,sign", "--restarts", "2", "--restarts-iterations", "2", "--threads", "1",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    throughput = [row for row in rows if row["measurement"] == "throughput"]
    assert [row["engine"] for row in throughput] == ["serial", "vmap", "hooks", "inner", "auto:inner"]
    for row in throughput:
        assert FIELDS <= set(row)
        assert row["candidates_per_s"] > 0 and row["limit_share"] > 0 and row["flops_per_candidate"] > 0
        assert abs(row["speedup"] - row["candidates_per_s"] / row["serial_candidates_per_s"]) < 1e-9
        assert len(row["losses"]) == 3
        for loss, reference in zip(row["losses"], row["serial_losses"]):
            assert abs(loss - reference) <= 1e-4 * abs(reference)
    end_to_end = [row for row in rows if row["measurement"] == "end_to_end"]
    assert [row["budget"] for row in end_to_end] == [6] * 5
    assert all(row["seconds"] > 0 for row in end_to_end)
    adaptive = [(row["defense"]["name"], row["engine"]) for row in rows if row["measurement"] == "adaptive"]
    assert adaptive == [
        (d, e)
        for d, e in [
            ("clipping", "serial"),
            ("clipping", "hooks"),
            ("clipping", "inner"),
            ("sign", "serial"),
            ("sign", "hooks"),
        ]
    ]  # sign: no linear form, no inner
    adaptive_rows = [row for row in rows if row["measurement"] == "adaptive"]
    assert all(row["loss_max_relative_difference"] < 1e-4 for row in adaptive_rows)
    restarts = {row["attack"]: row for row in rows if row["measurement"] == "restarts"}
    assert sorted(restarts) == ["idlg", "inverting_gradients"]
    assert all(row["restarts"] == 2 and row["seconds"] > 0 for row in restarts.values())
    assert restarts["inverting_gradients"]["loss_max_relative_difference"] < 1e-4
    controls = [(row["attack"], row["restarts"]) for row in rows if row["measurement"] == "controls"]
    assert controls == [("inverting_gradients", 1), ("inverting_gradients", 2), ("idlg", 1), ("idlg", 2)]
    assert all(row["seconds"] > 0 and row["evaluations"] > 0 for row in rows if row["measurement"] == "controls")
    assert all(0 < row["peak_share"] for row in throughput)
    table = out.with_suffix(".md").read_text()
    assert "| lenet | 1x8 | 3 | hooks |" in table and "end-to-end GGL-CMA" in table
    assert "| inverting_gradients on lenet 1x8 | 2 |" in table and "attack and control as one population" in table


def test_perf_cli_rejects_bad_options(tmp_path, capsys):
    assert main(["--victim", "vgg", "--out", str(tmp_path / "x.json")]) == 2
    assert "--victim" in capsys.readouterr().err
    assert main(["--population", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--population" in capsys.readouterr().err
    assert main(["--engines", "turbo", "--out", str(tmp_path / "x.json")]) == 2
    assert "--engines" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_perf_cli_checks_every_argument_before_measuring(tmp_path, capsys, monkeypatch):
    import benchmarks.perf.cli as cli

    def never(*args, **kwargs):  # measuring would mean an input passed unchecked
        raise AssertionError("measured")

    monkeypatch.setattr(cli, "_device", never)
    (tmp_path / "file").write_text("")
    bad = {
        "--out": [str(tmp_path / "file" / "perf.json"), str(tmp_path), "/proc/ggl-perf.json"],
        "--population": ["99999999", "1,-2", "1e3"],
        "--image-size": ["12", "4096"],
        "--batch": ["0", "100000"],
        "--max-seconds": ["nan", "-1", "inf"],
        "--device": ["tpu", "cuda:x"],
        "--seed": ["-1"],
        "--threads": ["0"],
    }
    for option, values in bad.items():
        for value in values:
            assert main([option, value, "--out", str(tmp_path / "p.json")][: 2 if option == "--out" else 4]) == 2
            assert option in capsys.readouterr().err, (option, value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_perf_name_tables_are_the_registries():
    from benchmarks.perf.cli import ENGINE_NAMES, VICTIM_NAMES
    from ggl.attacks.batched import ENGINES
    from ggl.fl import VICTIMS

    assert set(VICTIM_NAMES) == set(VICTIMS)
    assert set(ENGINE_NAMES) == (set(ENGINES) - {"serial"}) | {"auto"}


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler (g++)")
def test_perf_cli_times_the_compiled_engine(tmp_path):
    """``--compile``: a row for vmap through ``torch.compile``, its losses equal to the serial ones, its compile time
    apart; the hooks engines are not compiled (dynamo does not trace their captured-output gradients)."""
    out = tmp_path / "perf.json"
    argv = [
        "--victim", "lenet", "--image-size", "8", "--channels", "1", "--population", "3", "--repeats", "1",
        "--engines", "vmap,inner", "--compile", "default", "--defenses", "", "--restarts", "1", "--e2e-budget", "0",
        "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = [row for row in json.loads(out.read_text()) if row["measurement"] == "throughput"]
    assert [row["engine"] for row in rows] == ["serial", "vmap", "vmap+compile:default", "inner"]
    compiled = rows[2]
    assert compiled["compile_seconds"] > 0 and compiled["candidates_per_s"] > 0
    assert compiled["loss_max_relative_difference"] < 1e-4
    assert "vmap+compile:default (" in out.with_suffix(".md").read_text()
