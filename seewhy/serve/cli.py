"""``seewhy serve``: the local web explorer.

::

    seewhy serve [--model M ...] [--host 127.0.0.1] [--port 8765] [--workers 1] [--max-upload-mb 20]
                 [--queue-size 8] [--max-pixels N]

Serves the page and its JSON API (see README) with uvicorn until Ctrl-C. ``--model`` (repeatable) names what the page
may use: zoo names or specs (``file.py:factory``, ``module:factory``, a TorchScript file), built when the server
starts; requests cannot name anything else. It listens on 127.0.0.1 (this machine only) unless ``--host`` says
otherwise; any other address is warned about, as the page then runs models for whoever can reach the port.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from .. import command
from ..argtypes import positive_int

log = logging.getLogger("seewhy")

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "add_parser", "host_warning", "run"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_FORMAT = {"epilog": command.EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}


def host_warning(host: str) -> str | None:
    """The warning for listening on ``host``, or None for a loopback address (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    everyone = name in ("0.0.0.0", "::", "")
    return (f"--host {host}: the server is reachable from {'every network this machine is on' if everyone else host}"
            "; anyone who can reach the port can upload images and run the models (no authentication). "
            f"Use --host {DEFAULT_HOST} to keep it on this machine")


def _positive_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected megabytes such as 20 or 2.5, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected megabytes > 0, got {text!r}")
    return value


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``seewhy serve`` to ``subparsers`` (options of every command from ``common``)."""
    from ..zoo import MODELS

    p = subparsers.add_parser(
        "serve", parents=[common], help="a local web explorer: drop an image, compare explanations, look inside",
        description="Serve a local web page to explain a model's decisions on your images: the top-5 classes, maps "
                    "of several methods side by side, deletion/insertion metrics, the HTML report, and a layer "
                    "browser; with a JSON API behind it (see README). Ctrl-C stops it.", **_FORMAT)
    p.add_argument("--model", action="append", metavar="NAME|SPEC",
                   help=f"a model the page may use (repeatable; default: efficientnet_lite0): a zoo model "
                        f"({', '.join(MODELS)}), path/file.py:factory, package.module:factory or a TorchScript file")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; any other is warned about)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="worker threads per model, each with its own copy of the model (default: 1)")
    p.add_argument("--max-upload-mb", type=_positive_mb, default=20.0, metavar="MB",
                   help="largest upload in megabytes (default: 20; larger ones get HTTP 413)")
    p.add_argument("--queue-size", type=positive_int, default=8, metavar="N",
                   help="requests that may wait per model (default: 8; more get HTTP 503 with Retry-After)")
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="largest image (width x height) an upload may decode to: the decompression-bomb limit "
                        "(default: 40 megapixels)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the app (the models loaded first, so a bad spec fails now) and serve it with uvicorn until Ctrl-C."""
    from . import require

    require()
    import uvicorn

    from .app import create_app
    from .uploads import DEFAULT_MAX_PIXELS

    warning = host_warning(args.host)
    if warning:
        log.warning("%s", warning)
    models = [m for v in args.model or [] for m in [v.strip()] if m] or None
    app = create_app(models, max_upload_mb=args.max_upload_mb, queue_size=args.queue_size, workers=args.workers,
                     max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, preload=True)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    log.info("serving %s on http://%s:%d (Ctrl-C to stop)", ", ".join(app.state.service.models), shown, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return command.EXIT_OK
