"""`meshctl remote-access set-password|profile` and `meshctl get leases` (docs/remote-access.md).

Passwords and PKCS#12 passphrases come from a file or an environment variable, never from the
command line (argv is visible in `ps`). A device's key is made here and goes only into the
profile file meshctl writes (mode 0600); the controller signs a CSR.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshsec.common.pki import make_csr, new_key
from meshsec.common.secrets import Secret
from meshsec.meshctl.client import AdminClient
from meshsec.meshctl.convert import iso
from meshsec.meshctl.errors import EXIT_OK, UsageError, UserError
from meshsec.meshctl.printable import printable
from meshsec.meshctl.profiles import mobileconfig, sswan, swanctl, windows
from meshsec.meshctl.profiles.model import DeviceCredentials, ProfileError, ProfileInput
from meshsec.meshctl.secrets import add_value_source, read_value_source
from meshsec.meshctl.table import Column, print_table
from meshsec.meshctl.views import dump, human_bytes
from meshsec.v1 import admin_pb2

FORMATS = ("mobileconfig", "sswan", "windows", "swanctl")
# The format each platform of spec.devices gets when --format is left out.
PLATFORM_FORMATS = {"apple": "mobileconfig", "android": "sswan", "windows": "windows", "linux": "swanctl"}


def add_parser(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("remote-access", help="remote-access passwords and client profiles")
    rsub = p.add_subparsers(dest="ra_command", metavar="ACTION", parser_class=parser_class)
    rsub.required = True
    s = rsub.add_parser("set-password", help="set the EAP-MSCHAPv2 password of USER (kept as NT hash)")
    s.add_argument("user", metavar="USER")
    add_value_source(s, "password", required=True, what="the password")
    s = rsub.add_parser("profile", help="render the client profile of USER's DEVICE")
    s.add_argument("user", metavar="USER")
    s.add_argument("device", metavar="DEVICE")
    s.add_argument("--format", choices=FORMATS, help="default: from the device's platform")
    s.add_argument("--out", type=Path, required=True, help="file to write (a directory for swanctl)")
    s.add_argument(
        "--server", default="", help="address or name clients dial (default: a gateway's endpoint)"
    )
    s.add_argument("--server-id", default="", help="the gateway's IKE identity (default: its Node's ikeId)")
    s.add_argument("--ttl", type=int, default=0, metavar="SECONDS", help="device certificate lifetime")
    add_value_source(
        s, "passphrase", required=False, what="the PKCS#12 passphrase (mobileconfig, sswan, windows)"
    )


def _read(args: argparse.Namespace, prefix: str) -> Secret | None:
    value = read_value_source(args, prefix)
    # A password or passphrase is text typed by a person: no line ending is ever part of it.
    return None if value is None else Secret(value.reveal().rstrip(b"\r\n"))


def remote_access(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    if args.ra_command == "set-password":
        password = _read(args, "password")
        assert password is not None
        try:
            text = password.reveal().decode()
        except UnicodeDecodeError:
            raise UserError("the password is not UTF-8 text") from None
        response = client.set_remote_access_password(args.user, text)
        verb = "set" if response.created else "replaced"
        out.write(
            printable(f"password of remoteaccessuser/{args.user} {verb} (stored as its NT hash)") + "\n"
        )
        return EXIT_OK
    return profile(args, client, out)


def profile(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    facts = client.remote_access_profile(args.user, args.device)
    fmt = args.format or PLATFORM_FORMATS[facts.platform]
    server, server_id = args.server, args.server_id
    if not (server and server_id):
        gateway = next((g for g in facts.gateways if g.addresses), None)
        if gateway is None:
            raise UserError(
                f"the gateways of pool {facts.pool} select no Node yet", hint="give --server and --server-id"
            )
        server, server_id = server or gateway.addresses[0], server_id or gateway.ike_id
    auth = facts.auth_method
    passphrase = _read(args, "passphrase")
    if auth != "eap-mschapv2" and fmt != "swanctl" and passphrase is None:
        raise UsageError(f"a {fmt} profile embeds a PKCS#12: give --passphrase-file or --passphrase-env")
    credentials = None if auth == "eap-mschapv2" else _device_credentials(client, args)
    request = ProfileInput(
        name=f"meshsec-{facts.pool}",
        server=server,
        server_id=server_id,
        identity=facts.identity,
        auth=auth,
        ca=x509.load_pem_x509_certificate(facts.ca_certificate_pem.encode()),
        ike_proposals=tuple(facts.ike_proposals),
        esp_proposals=tuple(facts.esp_proposals),
        routes=tuple(facts.routes),
        ike_lifetime_s=facts.ike_lifetime_seconds,
        child_lifetime_s=facts.child_lifetime_seconds,
        credentials=credentials,
        passphrase=passphrase,
    )
    try:
        if fmt == "swanctl":
            _write_tree(args.out, swanctl.render(request))
        else:
            renderer = {
                "mobileconfig": mobileconfig.render,
                "sswan": sswan.render,
                "windows": windows.render,
            }[fmt]
            _write_file(args.out, renderer(request))
    except ProfileError as exc:
        raise UserError(f"cannot render a {fmt} profile for pool {facts.pool}: {exc}") from None
    out.write(printable(f"wrote {fmt} profile for {args.device} of {args.user} to {args.out}") + "\n")
    return EXIT_OK


def _device_credentials(client: AdminClient, args: argparse.Namespace) -> DeviceCredentials:
    key = new_key()
    issued = client.issue_device_certificate(
        args.user, args.device, make_csr(key, f"{args.device}.{args.user}"), args.ttl
    )
    loaded = serialization.load_pem_private_key(key.reveal(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return DeviceCredentials(x509.load_pem_x509_certificate(issued.certificate_pem.encode()), loaded)


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_file(path, data)


def get_leases(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    leases = client.leases()
    if args.names:
        leases = [x for x in leases if x.user in set(args.names)]
    if args.output in ("json", "yaml"):
        out.write(dump({"kind": "List", "items": [lease_document(x) for x in leases]}, args.output))
        return EXIT_OK
    if not leases:
        sys.stderr.write("No leases found.\n")
        return EXIT_OK
    wide = args.output == "wide"
    print_table(lease_columns(wide), [lease_row(x, wide) for x in leases], out)
    return EXIT_OK


def lease_columns(wide: bool = False) -> list[Column]:
    """`-o wide` adds the client's traffic (bytes in from / out to it)."""
    return [
        Column("USER", False),
        Column("DEVICE", False),
        Column("POOL", False),
        Column("ADDRESSES"),
        Column("GATEWAY", False),
        Column("CONNECTED SINCE", False),
        *([Column("IN/OUT", False)] if wide else []),
    ]


def traffic_text(lease: admin_pb2.RemoteAccessLease) -> str:
    """Bytes from / to the client as its gateway last reported them ("-": not reported yet)."""
    if not lease.HasField("traffic_at"):
        return "-"
    return f"{human_bytes(lease.bytes_in)}/{human_bytes(lease.bytes_out)}"


def lease_row(lease: admin_pb2.RemoteAccessLease, wide: bool = False) -> list[Any]:
    return [
        lease.user,
        lease.device,
        lease.pool,
        ",".join(lease.addresses),
        lease.gateway,
        iso(lease.connected_since) or "-",
        *([traffic_text(lease)] if wide else []),
    ]


def lease_document(lease: admin_pb2.RemoteAccessLease) -> dict[str, Any]:
    return {
        "user": lease.user,
        "device": lease.device,
        "pool": lease.pool,
        "addresses": list(lease.addresses),
        "gateway": lease.gateway,
        "connectedSince": iso(lease.connected_since),
        "traffic": {
            "bytesIn": lease.bytes_in, "bytesOut": lease.bytes_out,
            "packetsIn": lease.packets_in, "packetsOut": lease.packets_out,
            "reportedAt": iso(lease.traffic_at) if lease.HasField("traffic_at") else None,
        },
    }


def lease_lines(leases: Sequence[admin_pb2.RemoteAccessLease]) -> list[str]:
    """For `describe remoteaccessuser`: one line per lease."""
    if not leases:
        return ["Leases:  <none>"]
    return ["Leases:"] + [
        f"  {x.device}: {','.join(x.addresses)} on {x.gateway} since {iso(x.connected_since) or '-'},"
        f" in/out {traffic_text(x)}"
        for x in leases
    ]
