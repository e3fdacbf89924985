"""Argument types shared by the command-line tools and the benchmarks."""

from __future__ import annotations

import argparse


def parse_size(text: str, minimum: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """'1024x512' -> (1024, 512); argparse type with a clear message on bad input."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x512 (WIDTHxHEIGHT), got {text!r}") from None
    if width < minimum[0] or height < minimum[1]:
        raise argparse.ArgumentTypeError(f"size {text} is too small; use at least {minimum[0]}x{minimum[1]}")
    return width, height
