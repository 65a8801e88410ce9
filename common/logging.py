"""Logging setup shared by the agent, the controller and meshctl (`--log-format text|json`).

json: one JSON object per line on stderr (python-json-logger): ts, level, logger, message, and
exc_info with the whole traceback as one string when there is one. Secrets are redacted the same
way in both formats: a `Secret` formats as `Secret(<n bytes redacted>)` wherever it is put into
a message, an argument or an `extra` field."""

from __future__ import annotations

import argparse
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        json_default=str,  # anything else (a Secret included) as its str(), which redacts
    )


def configure(level: str = "INFO", *, log_format: str = "text") -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def add_log_format_argument(parser: argparse.ArgumentParser, default: str | None = "text") -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help="text lines, or one JSON object per line (default text)",
    )
