"""A static website of the leaderboards: ``python -m benchmarks.site`` builds it into ``build/site/``.

``build`` renders the committed reports (``leaderboards/SUITE/leaderboard.json``, the privacy-utility plot, the
reconstruction grids, the submitted defenses) into plain HTML pages that work from ``file://`` or any static host.
"""

from .build import build_site, main

__all__ = ["build_site", "main"]
