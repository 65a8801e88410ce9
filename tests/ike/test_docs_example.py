"""The usage example in docs/ike.md must keep working."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "ike.md"


def test_docs_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    example = next(b for b in blocks if "IkeSaTable" in b and "deliver" in b)
    exec(compile(example, str(DOC), "exec"), {})
