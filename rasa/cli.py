"""The ``rasa`` command line: one entry point, sub-commands per step of the pipeline.

Every Snakemake rule and DVC stage calls one of these. Command groups live beside the code
they drive (``rasa/data/cli.py``, ...); each module exposes ``register(subparsers)`` and sets
``func`` on its parsers. Heavy imports (torch) happen inside the handlers, so ``--help`` is
instant.

Errors a user can fix (:class:`rasa.errors.RasaError`) print one paragraph and exit 2, and so
do errors of the file system (disk full, read-only folder, a file where a folder should be, no
permission: :func:`os_error_message` names the path and says what to do) and text files that
are not UTF-8; any other exception prints a one-line summary and exits 1. ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import errno
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


# What to tell the user for an OSError of the file system, by errno.
OS_ERROR_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run the command again "
    "(nothing half-written was kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.EROFS: "the file system is read-only; choose an output path you can write to",
    errno.EACCES: "permission denied; choose a path you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a path you can write to",
    errno.EISDIR: "a folder is there where a file is expected; pass a file path",
    errno.ENOTDIR: "a file is there where a folder is expected (this path or one of its "
    "parents); pass a folder path",
    errno.EEXIST: "a file is already there where a folder should be created; pass another "
    "path or move the file away",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (argparse names the flag in its message)."""
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def os_error_message(exc: OSError) -> str:
    """``'PATH: what went wrong; what to do'`` for an error of the file system."""
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    hint = OS_ERROR_HINTS.get(exc.errno) or (exc.strerror or str(exc))
    return f"{path}: {hint}." if path is not None else f"{hint} ({exc})."


def _say(text: str) -> None:
    print(textwrap.fill(f"error: {text}", width=100, break_on_hyphens=False), file=sys.stderr)


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
        _say(str(exc))
        return 2
    except UnicodeDecodeError as exc:
        if args.debug:
            raise
        _say(f"a file given to this command is not UTF-8 text ({exc}); save it as UTF-8.")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`rasa ... | head`): not an error of ours.
        sys.stderr.close()
        return 141
    except OSError as exc:
        if args.debug:
            raise
        if exc.errno is None:
            return _internal_error(exc)
        _say(os_error_message(exc))
        return 2
    except Exception as exc:  # noqa: BLE001 - last-resort message for the user
        if args.debug:
            raise
        return _internal_error(exc)
    return int(result or 0)


def _internal_error(exc: BaseException) -> int:
    print(
        f"internal error: {type(exc).__name__}: {exc}\n(run again with --debug for the "
        "traceback, and please report it)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
