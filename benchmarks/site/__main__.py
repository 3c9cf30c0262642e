"""``python -m benchmarks.site [--out DIR] [--leaderboards DIR] [--screenshot PNG]``: build the leaderboard site."""

import sys

from .build import main

sys.exit(main())
