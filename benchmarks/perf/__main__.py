"""Entry point of ``python -m benchmarks.perf``."""

from benchmarks.perf.cli import main

raise SystemExit(main())
