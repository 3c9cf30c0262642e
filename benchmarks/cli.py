"""ggl-bench: one command for the suite runner, submissions, speed benchmarks and prior training.

    ggl-bench run --suite smoke            # = python -m benchmarks.run (python -m ggl_bench.run when installed)
    ggl-bench submit ENTRY.yaml            # = python -m benchmarks.submit
    ggl-bench leaderboard --suite all      # = python -m benchmarks.leaderboard
    ggl-bench perf --device cuda           # = python -m benchmarks.perf
    ggl-bench train-prior --data ... --out ...  # = python -m benchmarks.train_prior

ggl-bench COMMAND --help lists a command's options. Only the chosen command's module is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "run a suite (or list, print or count its cells) and write its leaderboard"),
    "submit": ("submit", "validate and evaluate a leaderboard submission"),
    "leaderboard": ("leaderboard", "regenerate a published leaderboard from its shipped rows and the submissions"),
    "perf": ("perf.cli", "measure candidates per second of the batched attack engines"),
    "train-prior": ("train_prior", "train a WGAN-GP generative prior on a public split"),
}
"""Subcommand: (module of this package with a ``main(argv) -> int``, one-line help)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and ends an option's help with its default.

    The default is left out when the help already speaks of it, and for flags and options without one (None).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: a subcommand, then that command's own arguments."""
    parser = argparse.ArgumentParser(prog="ggl-bench", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named first in ``argv`` with the rest of it; its exit status."""
    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(f"{__package__}.{COMMANDS[args.command][0]}")
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
