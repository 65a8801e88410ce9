"""Hostile YAML for `meshctl apply` and the standalone agent's config (issue 18): deep nesting,
an alias inside its own anchor, billion laughs and an oversized file are refused with a clear
message (meshctl: exit 2) instead of a RecursionError traceback, a hang or hundreds of MB."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshsec.agent.standalone.config import ConfigError, load_config
from meshsec.common.safeyaml import MAX_YAML_BYTES
from meshsec.meshctl.cli import main

LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)
)
HOSTILE = {
    "deep": ("[" * 20_000 + "]" * 20_000, "nested deeper than"),
    "self-alias": ("kind: Site\nspec: &s {sub: *s}\n", "refers to its own anchor"),
    "billion-laughs": (LAUGHS, "expands to more than"),
    "oversized": ("kind: Site\nnote: " + "x" * (MAX_YAML_BYTES + 1) + "\n", "larger than the"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_meshctl_refuses_hostile_yaml_with_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expect = HOSTILE[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    # The controller is never reached: the file is refused while it is read.
    assert main(["--controller", str(tmp_path / "none.sock"), "apply", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(path) in err and "Traceback" not in err, err


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_agent_config_refuses_hostile_yaml(case: str, tmp_path: Path) -> None:
    text, expect = HOSTILE[case]
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expect):
        load_config(path)


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    from meshsec.common.safeyaml import safe_load_all

    docs = safe_load_all("base: &b {x: 1}\nd: {<<: *b, y: 2}\n---\n- 1\n")
    assert docs == [{"base": {"x": 1}, "d": {"x": 1, "y": 2}}, [1]]
