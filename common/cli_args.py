"""argparse value types shared by the command-line tools."""

from __future__ import annotations

import argparse


def uint32(text: str) -> int:
    """A count for a uint32 request field: refused by the parser, not by protobuf after parsing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and {(1 << 32) - 1}")
    return value
