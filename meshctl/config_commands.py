"""`meshctl config view|get-contexts|current-context|use-context|set-context|delete-context`.

They read and write the contexts file only (meshsec.meshctl.config) and never call a controller.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from meshsec.meshctl.config import Context, MeshConfig, config_path
from meshsec.meshctl.errors import EXIT_OK, UsageError
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Column, print_table
from meshsec.meshctl.views import dump


def add_parser(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="contexts: which controllers meshctl knows and how to reach them")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=parser_class)
    csub.required = True
    c = csub.add_parser("view", help="the config file (paths only; it holds no keys)")
    c.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    csub.add_parser("get-contexts", help="the contexts, the current one marked")
    csub.add_parser("current-context", help="the current context's name")
    c = csub.add_parser("use-context", help="make NAME the current context")
    c.add_argument("name", metavar="NAME")
    c = csub.add_parser("set-context", help="create NAME or change the fields given")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--server", help="host:port of the mTLS listener, or unix:/path/admin.sock")
    c.add_argument("--ca", type=Path, help="CA bundle that signed the controller's certificate")
    c.add_argument("--cert", type=Path, help="admin client certificate")
    c.add_argument("--key", type=Path, help="admin client key")
    c.add_argument("--server-name", help="name to check in the serving certificate ('' clears it)")
    c = csub.add_parser("delete-context", help="remove context NAME")
    c.add_argument("name", metavar="NAME")


def run_config(args: argparse.Namespace, out: TextIO) -> int:
    config = MeshConfig.load(config_path(args.config))
    command = args.config_command
    if command == "view":
        out.write(dump(config.document(), args.output))
    elif command == "get-contexts":
        rows = [
            ["*" if c.name == config.current else "", c.name, c.server, c.cert, c.server_name]
            for c in config.contexts.values()
        ]
        columns = [
            Column("CURRENT"),
            Column("NAME", shrink=False),
            Column("SERVER"),
            Column("CERT"),
            Column("SERVER NAME"),
        ]
        print_table(columns, rows, out)
    elif command == "current-context":
        if not config.current:
            raise UsageError(f"no current context in {config.path}")
        out.write(printable(config.current) + "\n")
    elif command == "use-context":
        config.context(args.name)
        config.current = args.name
        config.save()
        out.write(printable(f"switched to context {args.name}") + "\n")
    elif command == "set-context":
        _set_context(config, args)
        out.write(printable(f"context {args.name} written to {config.path}") + "\n")
    else:
        config.context(args.name)
        del config.contexts[args.name]
        if config.current == args.name:
            config.current = ""
        config.save()
        out.write(printable(f"context {args.name} deleted from {config.path}") + "\n")
    return EXIT_OK


def _set_context(config: MeshConfig, args: argparse.Namespace) -> None:
    existing = config.contexts.get(args.name)
    if existing is None and not args.server:
        raise UsageError(f"context {args.name} is new: --server is required")
    context = existing or Context(args.name, args.server)
    if args.server:
        context.server = args.server
    for field in ("ca", "cert", "key"):
        path: Path | None = getattr(args, field)
        if path is not None:
            if not path.is_file():
                raise UsageError(f"--{field} {path}: no such file")
            setattr(context, field, config.file_ref(path))
    if args.server_name is not None:
        context.server_name = args.server_name
    config.contexts[args.name] = context
    if not config.current:
        config.current = args.name
    config.save()


__all__ = ["add_parser", "run_config"]
