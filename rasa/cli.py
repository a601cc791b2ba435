"""The ``rasa`` command line: one entry point, sub-commands per step of the pipeline.

Every Snakemake rule and DVC stage calls one of these. Command groups live beside the code
they drive (``rasa/data/cli.py``, ...); each module exposes ``register(subparsers)`` and sets
``func`` on its parsers. Heavy imports (torch) happen inside the handlers, so ``--help`` is
instant.

Errors a user can fix (:class:`rasa.errors.RasaError`) print one paragraph and exit 2; any
other exception prints a one-line summary and exits 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from rasa import __version__
from rasa.errors import RasaError

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "rasa.data.cli",
    "rasa.engine.cli",
    "rasa.weak.cli",
    "rasa.report.cli",
    "rasa.search.cli",
    "rasa.workflow",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rasa",
        description="Reproducible text-based person search: RaSa (IJCAI 2023) and CMMT "
        "(ICCV 2021). Each sub-command is one step of the Snakemake/DVC pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"rasa {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show Python tracebacks instead of short errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except RasaError as exc:
        if args.debug:
            raise
        print(
            textwrap.fill(f"error: {exc}", width=100, break_on_hyphens=False),
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`rasa ... | head`): not an error of ours.
        sys.stderr.close()
        return 141
    except Exception as exc:  # noqa: BLE001 - last-resort message for the user
        if args.debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n(run again with --debug for the "
            "traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
