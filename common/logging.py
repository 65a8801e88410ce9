"""Logging setup shared by the agent, the controller and meshctl."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO", *, json_lines: bool = False) -> None:
    fmt = (
        '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
        if json_lines
        else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
