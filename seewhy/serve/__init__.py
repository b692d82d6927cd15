"""``seewhy serve``: a local web explorer (FastAPI + uvicorn, the optional extra ``seewhy[serve]``).

:func:`create_app` builds the app (:mod:`seewhy.serve.app`); :mod:`seewhy.serve.cli` is the command. Importing this
package needs nothing beyond seewhy (the command line lists ``serve`` either way); ``create_app`` raises ImportError
naming ``pip install "seewhy[serve]"`` when FastAPI, uvicorn or python-multipart is missing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["INSTALL_HINT", "create_app", "require"]

INSTALL_HINT = 'seewhy serve needs FastAPI, uvicorn and python-multipart: pip install "seewhy[serve]"'
_NEEDED = ("fastapi", "uvicorn", "multipart")


def require() -> None:
    """Raise ImportError with :data:`INSTALL_HINT` unless the serve extra is installed."""
    missing = []
    for name in _NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError, AttributeError):  # None in sys.modules (blocked), a broken install
            found = False
        if not found:
            missing.append("python-multipart" if name == "multipart" else name)
    if missing:
        raise ImportError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")


def __getattr__(name: str) -> Any:
    if name == "create_app":
        require()
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
