"""Plain-text tables that fit the terminal, with colour only when writing to a terminal.

Cells are plain strings; a ``Styled`` cell carries an ANSI colour that is applied after width
calculation, so colour never breaks alignment. When the table is wider than the terminal the
widest shrinkable columns are cut (ending in ``~``); output to a pipe or file is never cut, so
scripts see whole values (they should use ``-o json`` anyway).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from meshsec.meshctl.printable import printable

_COLOURS = {"green": "32", "yellow": "33", "red": "31", "grey": "90", "bold": "1", "cyan": "36"}
_MIN_WIDTH = 8
_GAP = "   "


@dataclass(frozen=True)
class Styled:
    text: str
    colour: str = ""

    def __str__(self) -> str:
        return self.text


Cell = str | Styled


@dataclass(frozen=True)
class Column:
    header: str
    shrink: bool = True  # may be cut to fit the terminal


def use_colour(stream: TextIO) -> bool:
    """ANSI colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def terminal_width(stream: TextIO) -> int | None:
    """Width to fit, or None when not writing to a terminal (nothing is cut then)."""
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()) and not os.environ.get("COLUMNS"):
        return None
    return shutil.get_terminal_size((120, 24)).columns


def paint(text: str, colour: str, enabled: bool) -> str:
    code = _COLOURS.get(colour)
    if not enabled or not code:
        return text
    return f"\x1b[{code}m{text}\x1b[0m"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 1)] + "~"


def fit_widths(natural: Sequence[int], shrinkable: Sequence[bool], limit: int | None) -> list[int]:
    """Column widths whose sum (with gaps) fits ``limit``, cutting the widest shrinkable columns first.

    Columns are evened out from the top: the widest loses characters until it is as narrow as the
    next widest, and so on, never below a readable minimum.
    """
    widths = list(natural)
    if limit is None:
        return widths
    gaps = len(_GAP) * max(len(widths) - 1, 0)
    while (excess := sum(widths) + gaps - limit) > 0:
        candidates = sorted(
            (i for i, w in enumerate(widths) if shrinkable[i] and w > _MIN_WIDTH), key=lambda i: -widths[i]
        )
        if not candidates:
            break
        widest = candidates[0]
        runner_up = widths[candidates[1]] if len(candidates) > 1 else _MIN_WIDTH
        step = min(excess, max(widths[widest] - max(runner_up, _MIN_WIDTH), 1))
        widths[widest] = max(widths[widest] - step, _MIN_WIDTH)
    return widths


def render(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    colour: bool = False,
    width: int | None = None,
) -> str:
    # Cells come from the controller (hostnames, errors...): escaped before measuring, so the
    # widths are those of what is printed.
    headers = [printable(c.header) for c in columns]
    texts = [[printable(str(cell)) for cell in row] for row in rows]
    natural = [max([len(h)] + [len(r[i]) for r in texts]) for i, h in enumerate(headers)]
    widths = fit_widths(natural, [c.shrink for c in columns], width)
    lines = []
    last = len(columns) - 1

    def line(cells: Sequence[str], styles: Sequence[str]) -> str:
        parts = []
        for i, (cell, style) in enumerate(zip(cells, styles, strict=True)):
            text = _cut(cell, widths[i])
            pad = "" if i == last else " " * (widths[i] - len(text))
            parts.append(paint(text, style, colour) + pad)
        return _GAP.join(parts).rstrip()

    lines.append(line(headers, ["bold"] * len(headers)))
    lines.extend(
        line(text, [cell.colour if isinstance(cell, Styled) else "" for cell in row])
        for text, row in zip(texts, rows, strict=True)
    )
    return "\n".join(lines) + "\n"


def print_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], stream: TextIO | None = None
) -> None:
    out = stream or sys.stdout
    out.write(render(columns, rows, colour=use_colour(out), width=terminal_width(out)))
