"""Text from the controller made safe to write to a terminal.

Hostnames, agent versions, error messages, tunnel ids and event messages come from nodes, and a
node could send terminal control sequences (ESC/CSI/OSC: move the cursor, retitle the window,
rewrite earlier lines) or bidi overrides that reorder what the admin reads. Everything that
is not printable (C0, DEL, C1, Unicode format characters and separators) is shown as a Python-style
escape instead, so it stays visible and nothing reaches the terminal as a control. meshctl's own
colours are added after this, only on a terminal (`table.paint`). ``-o json``/``-o yaml`` need none
of it: both encoders escape control characters themselves.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character escaped; ``keep_newlines`` keeps ``\\n`` as is,
    for messages meshctl itself lays out on several lines."""
    if text.isprintable():
        return text
    if keep_newlines:
        return "\n".join(printable(line) for line in text.split("\n"))
    return "".join(c if c.isprintable() else _escape(c) for c in text)
