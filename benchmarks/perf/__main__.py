"""Entry point of ``python -m benchmarks.perf``."""

from .cli import main

raise SystemExit(main())
