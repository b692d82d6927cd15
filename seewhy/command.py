"""Running a ``seewhy`` command: the exit codes, the options every subcommand has (``-v``/``-q``), diagnostics on
stderr through :mod:`logging`, warnings as log lines, and errors as one line with an exit code.

Shared by :mod:`seewhy.cli` and :mod:`seewhy.protopnet.cli` (which builds only its own parser).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .progress import set_progress

log = logging.getLogger("seewhy")

EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_NOTHING: "nothing to report: no input could be used, or every method failed",
    EXIT_USAGE: "usage error: unknown method, model, layer, parameter or class; bad target; output folder not empty",
    EXIT_PARTIAL: "the report was written, but some inputs, methods or metrics failed (see its Failures section)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); no report was written",
}
EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class UsageError(ValueError):
    """A bad command line: printed as one line, exit code 2."""


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every subcommand: ``-v``/``--verbose`` and ``-q``/``--quiet``."""
    common = argparse.ArgumentParser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="debug logging, tracebacks on errors; full details in listings")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="warnings and errors only: no cost estimate, no progress bar or progress lines")
    return common


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and call the subcommand's ``func``; returns the exit code.

    ``args.argv`` holds the arguments as given. Logging goes to stderr at the level ``-v``/``-q`` ask for; a bad
    input (ValueError, TypeError, OSError, ImportError) is one line and :data:`EXIT_USAGE`, Ctrl-C
    :data:`EXIT_INTERRUPTED`."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, argparse usage errors (code 2)
        return exit_.code if isinstance(exit_.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    shown = set_progress(False) if args.quiet else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            return args.func(args)
    except BrokenPipeError:  # `seewhy methods | head`: the reader has gone; nothing to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (Python would report the pipe again at exit)
        return EXIT_OK
    except (ValueError, TypeError, OSError, ImportError) as err:  # bad input: one line, no traceback
        if args.verbose:
            log.exception("error")
        log.error("%s", err)  # the one line a user reads (the handler above shows errors even with -q)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted; no report was written")
        return EXIT_INTERRUPTED
    finally:
        if args.quiet:
            set_progress(shown)
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def exit_code(failed_inputs: Sequence[Any], failed_steps: Sequence[str]) -> int:
    """0 when everything worked, else 3 (the report is written; its Failures section lists what failed)."""
    if not failed_inputs and not failed_steps:
        return EXIT_OK
    what = [f"{len(failed_inputs)} input(s)" if failed_inputs else "", ", ".join(failed_steps)]
    log.warning("finished with failures (%s): exit code %d", "; ".join(w for w in what if w), EXIT_PARTIAL)
    return EXIT_PARTIAL


class _Formatter(logging.Formatter):
    """``seewhy: message``, with ``warning:`` / ``error:`` before warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        level = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}
        return f"seewhy: {level.get(record.levelno, '')}{super().format(record)}"


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    log.warning("%s", message)


def open_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """What a report command does first: the output folder ``args.out`` checked (before any work, honouring
    ``args.overwrite``), then ``args.model`` (with ``args.weights``) loaded onto ``args.device``: (model, zoo spec,
    device)."""
    from . import zoo
    from .argtypes import device as parse_device
    from .report_files import prepare_out_dir

    prepare_out_dir(args.out, overwrite=args.overwrite, create=False)
    device = parse_device(args.device)
    model, spec = zoo.load_model(args.model, args.weights)
    return model.to(device), spec, device
