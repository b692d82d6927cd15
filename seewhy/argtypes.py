"""argparse ``type=`` converters shared by the command lines: a bad value becomes a one-line usage error."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _bounded(int, text, lambda v: v >= 1, "a positive integer")


def count(text: str) -> int:
    """An integer >= 0."""
    return _bounded(int, text, lambda v: v >= 0, "an integer >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _bounded(float, text, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _bounded(kind: type, text: str, ok, what: str):  # type: ignore[no-untyped-def]
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value
