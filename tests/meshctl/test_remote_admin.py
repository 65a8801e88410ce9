"""meshctl against a real meshsec-controller over mTLS on 127.0.0.1: an admin certificate issued by
`meshsec-controller admin issue` (with a ready context) works, lets its holder issue another with
`meshctl admin issue`, and once revoked is refused with an error that says so."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from meshsec.meshctl.cli import main
from tests.meshctl.conftest import ControllerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"
pytestmark = pytest.mark.timeout(90)


def _controller_cli(*args: str) -> subprocess.CompletedProcess[str]:
    program = Path(sys.executable).parent / "meshsec-controller"
    return subprocess.run(
        [str(program), *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_issued_admin_certificate_works_remotely_until_revoked(
    controller_process: ControllerProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MESHSEC_CONTROLLER", raising=False)
    monkeypatch.delenv("MESHCONFIG", raising=False)
    socket = str(controller_process.socket)
    alice_dir = tmp_path / "alice"
    issued = _controller_cli(
        "admin", "--admin-socket", socket, "issue", "alice", "--out", str(alice_dir),
        "--set-context", "remote", "--server", controller_process.mtls,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    assert "PRIVATE KEY" not in issued.stdout + issued.stderr
    key = alice_dir / "alice-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    config = alice_dir / "config"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in config.read_text() and "key: alice-key.pem" in config.read_text()

    def meshctl(*args: str) -> int:
        return main(["--config", str(config), *args])

    # The context is the current one: no --controller, no socket; the call crosses TCP with mTLS.
    assert meshctl("apply", "-f", str(EXAMPLE)) == 0
    assert meshctl("get", "sites", "-o", "json") == 0
    assert '"dc1"' in capsys.readouterr().out
    assert meshctl("admin", "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:2] == ["NAME", "SERIAL"] and listing[1].split()[0] == "alice"
    assert listing[1].endswith("valid")

    # Alice issues Bob a certificate over her own connection; his context lands in the same file.
    bob_dir = tmp_path / "bob"
    assert meshctl("admin", "issue", "bob", "--out", str(bob_dir), "--set-context", "bob") == 0
    out = capsys.readouterr().out
    assert "context bob (" + controller_process.mtls + ")" in out and "PRIVATE KEY" not in out
    assert meshctl("--context", "bob", "get", "nodes") == 0
    capsys.readouterr()

    revoked = _controller_cli("admin", "--admin-socket", socket, "revoke", "alice")
    assert revoked.returncode == 0, revoked.stderr
    assert "of alice revoked" in revoked.stdout
    assert meshctl("get", "sites") == 1
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err and "of alice was revoked" in err and "by local" in err
    assert meshctl("--context", "bob", "get", "sites") == 0  # only Alice's certificate is gone
    capsys.readouterr()
    assert meshctl("--context", "bob", "admin", "list", "-o", "json") == 0
    listed = json.loads(capsys.readouterr().out)["adminCertificates"]
    states = {c["name"]: c["state"] for c in listed}
    assert states == {"alice": "revoked", "bob": "valid"}


def test_a_tcp_context_without_a_certificate_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHSEC_CONTROLLER", raising=False)
    config = tmp_path / "config"
    assert main(["--config", str(config), "config", "set-context", "bare", "--server", "127.0.0.1:1"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "get", "sites"]) == 2
    assert "context bare (127.0.0.1:1) has no ca, cert, key" in capsys.readouterr().err
