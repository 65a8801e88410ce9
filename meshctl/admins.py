"""`meshctl admin issue|list|revoke` (also run by `meshsec-controller admin` on the admin socket).

The key is made here and never leaves this machine: the controller signs a CSR. What `issue`
writes (into --out, which is created 0700): ``ca.pem``, ``<name>.pem`` and ``<name>-key.pem``
(0600, never printed), and with --set-context a context naming those files.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import TextIO

from google.protobuf import timestamp_pb2

from meshsec.common.pki import make_csr, new_key
from meshsec.common.secrets import Secret
from meshsec.meshctl.client import AdminClient
from meshsec.meshctl.config import Context, MeshConfig
from meshsec.meshctl.errors import EXIT_OK, UsageError, UserError
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Column, print_table
from meshsec.meshctl.views import dump
from meshsec.v1 import admin_pb2


def add_parser(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("admin", help="admin certificates for remote meshctl (issue, list, revoke)")
    add_actions(p, parser_class, context_help="write context CTX into the meshctl config (--config)")


def add_actions(
    p: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser], *, context_help: str
) -> None:
    asub = p.add_subparsers(dest="admin_command", metavar="ACTION", parser_class=parser_class)
    asub.required = True
    a = asub.add_parser("issue", help="issue a client certificate for admin NAME (key made locally)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the files go")
    a.add_argument("--ttl", type=int, default=0, metavar="SECONDS", help="lifetime (default 30 days)")
    a.add_argument("--set-context", metavar="CTX", help=context_help)
    a.add_argument("--server", metavar="HOST:PORT", help="the context's controller (mTLS listener)")
    a.add_argument("--server-name", default="", help="the context's name to check in the serving certificate")
    a.add_argument("--use", action="store_true", help="make the written context the current one")
    a = asub.add_parser("list", help="registered admin certificates")
    a.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    a = asub.add_parser("revoke", help="revoke every certificate of NAME, or one by --serial")
    a.add_argument("name", nargs="?", default="", metavar="NAME")
    a.add_argument("--serial", default="", help="revoke only this certificate (hex, from `admin list`)")


def admin(
    args: argparse.Namespace, client: AdminClient, out: TextIO, config: MeshConfig | None = None
) -> int:
    """`config`: where --set-context writes (meshctl: its --config file)."""
    if args.admin_command == "issue":
        return issue(args, client, out, config)
    if args.admin_command == "list":
        return list_certificates(args, client, out)
    if bool(args.name) == bool(args.serial):
        raise UsageError("give NAME or --serial SERIAL (one of them)")
    for cert in client.revoke_admins(name=args.name, serial=args.serial):
        out.write(printable(f"admin certificate {cert.serial} of {cert.name} revoked") + "\n")
    return EXIT_OK


def _private_file(path: Path, data: bytes) -> None:
    """Created 0600, never over an existing file (an earlier key is not silently lost)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path} exists; choose another --out or remove it first") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def issue(args: argparse.Namespace, client: AdminClient, out: TextIO, config: MeshConfig | None) -> int:
    if args.set_context and config is None:
        raise UsageError("--set-context needs a meshctl config file")
    server = args.server or (client.target.address if client.target.socket_path is None else "")
    if args.set_context and not server:
        raise UsageError("--set-context over the admin socket needs --server HOST:PORT (the mTLS listener)")
    folder: Path = args.out
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path, ca_path = (
        folder / f"{args.name}-key.pem",
        folder / f"{args.name}.pem",
        folder / "ca.pem",
    )
    for path in (key_path, cert_path):
        if path.exists():
            raise UserError(f"{path} exists; choose another --out or remove it first")
    key: Secret = new_key()
    response = client.issue_admin(args.name, make_csr(key, args.name), args.ttl)
    _private_file(key_path, key.reveal())
    cert_path.write_text(response.certificate_pem)
    ca_path.write_text(response.ca_certificate_pem)
    cert = response.certificate
    out.write(
        printable(
            f"admin certificate {cert.serial} for {cert.name}, valid until {_when(cert.not_after)}: "
            f"{cert_path}, key {key_path} (mode 0600), CA {ca_path}"
        )
        + "\n"
    )
    if args.set_context and config is not None:
        config.contexts[args.set_context] = Context(
            args.set_context,
            server,
            config.file_ref(ca_path),
            config.file_ref(cert_path),
            config.file_ref(key_path),
            args.server_name,
        )
        if args.use or not config.current:
            config.current = args.set_context
        config.save()
        out.write(printable(f"context {args.set_context} ({server}) written to {config.path}") + "\n")
    return EXIT_OK


def _when(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(cert: admin_pb2.AdminCertificate, now: datetime.datetime) -> str:
    if cert.HasField("revoked_at"):
        return f"revoked {_when(cert.revoked_at)} by {cert.revoked_by}"
    if cert.not_after.ToDatetime(tzinfo=datetime.UTC) < now:
        return "expired"
    return "valid"


def list_certificates(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    certs = client.list_admins()
    now = datetime.datetime.now(datetime.UTC)
    if args.output in ("json", "yaml"):
        items = [
            {
                "name": c.name,
                "serial": c.serial,
                "notBefore": _when(c.not_before),
                "notAfter": _when(c.not_after),
                "issuedBy": c.issued_by,
                "state": _state(c, now).split(" ")[0],
                **(
                    {"revokedAt": _when(c.revoked_at), "revokedBy": c.revoked_by}
                    if c.HasField("revoked_at")
                    else {}
                ),
            }
            for c in certs
        ]
        out.write(dump({"adminCertificates": items}, args.output))
        return EXIT_OK
    rows = [[c.name, c.serial, _when(c.not_after), c.issued_by, _state(c, now)] for c in certs]
    columns = [
        Column("NAME", shrink=False),
        Column("SERIAL", shrink=False),
        Column("NOT AFTER"),
        Column("ISSUED BY"),
        Column("STATE"),
    ]
    print_table(columns, rows, out)
    return EXIT_OK


__all__ = ["add_actions", "add_parser", "admin"]
