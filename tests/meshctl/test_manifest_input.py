"""Manifests meshctl cannot turn into a request are refused with their location, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshsec.meshctl import manifest
from meshsec.meshctl.errors import UserError, ValidationFailed

SITE = """\
apiVersion: meshsec.io/v1alpha1
kind: Site
metadata: {name: dc9}
spec:
  prefixes: [198.19.9.0/24]
  gatewaySelector:
    matchLabels: {role: gw}
  extra:
    on: restart
    list: [{2: x}]
"""


def test_keys_that_are_not_strings_are_reported_with_their_path(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    with pytest.raises(ValidationFailed) as failed:
        manifest.load([str(path)])
    paths = {p.path: p.message for p in failed.value.problems}
    # YAML 1.1 reads the key `on` as true.
    assert paths["spec.extra.True"] == "keys must be strings, not a boolean; quote it"
    assert paths["spec.extra.list[0].2"] == "keys must be strings, not int; quote it"


def test_a_file_that_is_not_utf8_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"kind: Site\nmetadata: {name: \xff\xfe}\n")
    with pytest.raises(UserError, match=r"binary\.yaml: cannot read"):
        manifest.load([str(path)])
