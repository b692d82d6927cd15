"""The package version, in a module of its own: reports and the CLI read it without importing the package."""

from __future__ import annotations

__version__ = "0.1.0"
