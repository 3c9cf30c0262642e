"""Importing the package is cheap: ``import ggl`` imports no torch, and heavy optional parts stay lazy."""

from __future__ import annotations

import json
import subprocess
import sys


def _fresh(code: str) -> dict:
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(output.stdout.strip().splitlines()[-1])


def test_import_ggl_is_fast_and_imports_no_torch() -> None:
    result = _fresh(
        "import json, sys, time\n"
        "start = time.perf_counter()\n"
        "import ggl\n"
        "elapsed = time.perf_counter() - start\n"
        "print(json.dumps({'seconds': elapsed, 'torch': 'torch' in sys.modules, 'version': ggl.__version__}))"
    )
    assert not result["torch"]
    assert result["seconds"] < 0.25, result  # measured: 1-15 ms
    assert result["version"]


def test_metrics_import_leaves_torchmetrics_scipy_and_torchvision_lazy() -> None:
    result = _fresh(
        "import json, sys\n"
        "import ggl.metrics\n"
        "print(json.dumps({name: name in sys.modules for name in ('torchmetrics', 'scipy', 'torchvision')}))"
    )
    assert result == {"torchmetrics": False, "scipy": False, "torchvision": False}
