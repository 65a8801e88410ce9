"""`meshctl secret set|delete` and `meshctl get secrets`: ExternalGateway PSKs.

Values come from a file or an environment variable, never from the command line (argv is
visible to every user in `ps`), and nothing meshctl prints ever contains one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from meshsec.common.secrets import Secret
from meshsec.meshctl.client import AdminClient
from meshsec.meshctl.errors import EXIT_OK, UsageError, UserError
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Column, print_table
from meshsec.meshctl.views import dump

SECRET_ALIASES = ("secret", "secrets")


def add_parser(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("secret", help="ExternalGateway PSKs (write-only: never shown again)")
    ssub = p.add_subparsers(dest="secret_command", metavar="ACTION", parser_class=parser_class)
    ssub.required = True
    s = ssub.add_parser("set", help="create or replace secret NAME (16-64 bytes)")
    s.add_argument("name", metavar="NAME")
    add_value_source(s, "from", required=True, what="the value")
    s = ssub.add_parser("delete", help="delete secret NAME")
    s.add_argument("name", metavar="NAME")


def add_value_source(p: argparse.ArgumentParser, prefix: str, *, required: bool, what: str) -> None:
    """`--PREFIX-file FILE | --PREFIX-env VAR`: where a secret value is read from (never argv)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument(
        f"--{prefix}-file",
        dest=f"{prefix}_file",
        type=Path,
        metavar="FILE",
        help=f"read {what} from FILE (a trailing newline is dropped)",
    )
    group.add_argument(
        f"--{prefix}-env",
        dest=f"{prefix}_env",
        metavar="VAR",
        help=f"read {what} from environment variable VAR",
    )


def read_value_source(args: argparse.Namespace, prefix: str) -> Secret | None:
    """The value `add_value_source(..., prefix)` points at; None when neither flag was given."""
    env, path = getattr(args, f"{prefix}_env"), getattr(args, f"{prefix}_file")
    if env is not None:
        raw = os.environb.get(env.encode())
        if raw is None:
            raise UsageError(f"environment variable {env} is not set")
        return Secret(raw)
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    # `echo key > file` adds a newline nobody means as part of the key.
    return Secret(data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data)


def read_value(args: argparse.Namespace) -> Secret:
    value = read_value_source(args, "from")
    assert value is not None  # the group is required
    return value


def secret(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    if args.secret_command == "delete":
        client.delete_secret(args.name)
        out.write(printable(f"secret {args.name} deleted") + "\n")
        return EXIT_OK
    response = client.put_secret(args.name, read_value(args))
    used = ", ".join(response.secret.used_by) or "no ExternalGateway yet"
    verb = "created" if response.created else "replaced"
    out.write(printable(f"secret {args.name} {verb} (used by {used})") + "\n")
    return EXIT_OK


def get_secrets(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    secrets = list(client.list_secrets())
    if args.names:
        wanted = set(args.names)
        missing = wanted - {s.name for s in secrets}
        if missing:
            raise UserError(f"secret(s) not found: {', '.join(sorted(missing))}")
        secrets = [s for s in secrets if s.name in wanted]
    if args.output in ("json", "yaml"):
        items = [
            {"name": s.name, "usedBy": list(s.used_by), "resourceVersion": s.resource_version}
            for s in secrets
        ]
        out.write(dump({"secrets": items}, args.output))
        return EXIT_OK
    if not secrets:
        sys.stderr.write("No secrets found.\n")
        return EXIT_OK
    rows = [[s.name, ", ".join(s.used_by) or "<unused>"] for s in secrets]
    print_table([Column("NAME", shrink=False), Column("USED BY")], rows, out)
    return EXIT_OK


def is_secret(typed: str) -> bool:
    return typed.lower() in SECRET_ALIASES


__all__ = [
    "add_parser",
    "add_value_source",
    "get_secrets",
    "is_secret",
    "read_value",
    "read_value_source",
    "secret",
]
