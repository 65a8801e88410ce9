"""`meshctl completion`: the generated scripts are valid and bash completes meshctl's commands."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meshsec.meshctl.cli import main

# Sources the script, asks bash which function completes meshctl, and calls it like readline does.
COMPLETE = r"""
source "$1"
spec=$(complete -p meshctl) || exit 3
fn=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")
COMP_WORDS=(meshctl "${@:2}")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
"$fn" meshctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def script(tmp_path: Path, shell: str, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["completion", shell]) == 0
    path = tmp_path / f"meshctl.{shell}"
    path.write_text(capsys.readouterr().out)
    return path


def complete(path: Path, *words: str) -> list[str]:
    result = subprocess.run(
        ["bash", "-c", COMPLETE, "complete", str(path), *words],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return result.stdout.split()


def test_bash_script_is_valid_and_completes_subcommands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, "bash", capsys)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=20)
    assert complete(path, "di") == ["diagnose"]
    assert set(complete(path, "")) >= {"apply", "get", "diagnose", "wait", "completion", "lab"}
    assert "--watch" in complete(path, "get", "--w")
    assert sorted(complete(path, "completion", "")) == ["bash", "fish", "zsh"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_the_commands(
    shell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = script(tmp_path, shell, capsys).read_text()
    assert "diagnose" in text and "wait" in text


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "tcsh"]) == 2
    assert "invalid choice" in capsys.readouterr().err
