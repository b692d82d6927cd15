"""Command-line values shared by ``seewhy`` and ``seewhy protopnet``: argparse ``type=`` converters (a bad value
becomes a one-line usage error), ``--set`` items and the ``--device`` check."""

from __future__ import annotations

import argparse
import ast
from typing import Any

import torch


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _bounded(int, text, lambda v: v >= 1, "a positive integer")


def count(text: str) -> int:
    """An integer >= 0."""
    return _bounded(int, text, lambda v: v >= 0, "an integer >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _bounded(float, text, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def device(name: str) -> torch.device:
    """The torch device ``name`` (cpu, cuda, cuda:N, mps), checked to exist here.

    Raises:
        ValueError: an unknown or unavailable device, with what to use instead.
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here; use --device cpu")
    return dev


def setting(item: str) -> tuple[str, str, Any]:
    """A ``--set NAME.PARAM=VALUE``: (name, param, value), the value a Python/JSON literal or else the text.

    Raises:
        ValueError: not of the form NAME.PARAM=VALUE.
    """
    name, eq, text = item.partition("=")
    method, dot, key = name.strip().partition(".")
    if not eq or not dot or not method or not key:
        raise ValueError(f"--set expects METHOD.PARAM=VALUE (e.g. integrated_gradients.n_steps=20), got {item!r}")
    return method, key.strip(), literal(text.strip())


def literal(text: str) -> Any:
    """A Python/JSON literal (20, 0.1, 'x', [1, 2], true, null), else the text itself."""
    lowered = {"true": True, "false": False, "null": None, "none": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _bounded(kind: type, text: str, ok, what: str):  # type: ignore[no-untyped-def]
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value
