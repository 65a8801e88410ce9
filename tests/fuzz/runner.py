"""The shared fuzz runner: one target module per attack surface, run under atheris (libFuzzer)
or replayed without it.

    python -m tests.fuzz.runner TARGET [--seconds N] [--runs N] [--work DIR] [--artifacts DIR]
    python -m tests.fuzz.runner TARGET --replay FILE...    (reproduce a finding, no atheris)
    python -m tests.fuzz.runner --list

A target module (tests/fuzz/<target>.py) has `make() -> Callable[[bytes], None]`, which builds
what the target needs once per process and returns the function run on every input, and
`seeds() -> Iterator[tuple[str, bytes]]`, the seed inputs tests/fuzz/make_corpus.py writes
from real exchanges into tests/fuzz/corpus/<target>/. The input function catches exactly the
documented "bad input" error of the code it drives; anything else escaping it, or any rise of
an internal-error counter (`internal_error`: the engine's guard caught one of our bugs), is a
finding: libFuzzer writes the input to the artifacts folder and the run fails. docs/reliability.md
says how CI runs these (bash .ci/fuzz) and what a bounded pass covers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

TARGETS = (
    "ike_decoder",
    "ike_responder",
    "ike_auth",
    "ike_established",
    "ike_initiator",
    "esp_input",
    "manifest_mesh",
    "admin_api",
)
CORPUS = Path(__file__).parent / "corpus"
MAX_LEN = 8192  # longer inputs only slow the fuzzer down; IKE datagrams and manifests fit


class Finding(AssertionError):
    """A bug the fuzzer reached: an internal-error counter rose (traceback attached)."""


class _Recorder(logging.Handler):
    """Keeps the last traceback the code under test logged (its guards log and count)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.last = "".join(traceback.format_exception(*record.exc_info))


_recorder = _Recorder()


def quiet_logs() -> None:
    """The code under test logs every rejected input; only errors with a traceback are kept."""
    root = logging.getLogger("meshsec")
    root.setLevel(logging.ERROR)
    root.propagate = False
    if _recorder not in root.handlers:
        root.addHandler(_recorder)


def innermost_own_file(tb: str) -> str:
    """The file of the innermost frame of our code in a formatted traceback ("" if none)."""
    files = [line.split('"')[1] for line in tb.splitlines() if line.lstrip().startswith('File "')]
    own = [f for f in files if "site-packages" not in f and "/lib/python" not in f]
    return own[-1] if own else ""


def check_counters(where: str, *counters: Mapping[str, int], known: tuple[str, ...] = ()) -> None:
    """Raises Finding if any counter shows an internal error (a bug caught by a guard), unless the
    bug was raised in one of the `known` files (a class being fixed elsewhere)."""
    for counter in counters:
        errors = counter.get("internal_error", 0)
        if errors and not innermost_own_file(_recorder.last).endswith(known or ("\0",)):
            raise Finding(f"{where}: internal_error = {errors}\n{_recorder.last}")


def load(name: str) -> Any:
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    return importlib.import_module(f"tests.fuzz.{name}")


def corpus_inputs(name: str) -> Iterable[tuple[Path, bytes]]:
    folder = CORPUS / name
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        yield path, path.read_bytes()


def replay(one_input: Callable[[bytes], None], files: Iterable[Path]) -> int:
    for path in files:
        try:
            one_input(path.read_bytes())
        except Exception:
            print(f"FINDING {path}:", file=sys.stderr)
            traceback.print_exc()
            return 1
    return 0


def fuzz(name: str, args: argparse.Namespace) -> int:
    import atheris

    # Coverage feedback from our own code only (the libraries are not what we are testing).
    with atheris.instrument_imports(include=["meshsec", "tests.fuzz"]):
        module = load(name)
    quiet_logs()
    one_input = module.make()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    artifacts = Path(args.artifacts or work)
    artifacts.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_len={getattr(module, 'MAX_LEN', MAX_LEN)}",
        f"-artifact_prefix={artifacts}/{name}-",
        "-timeout=20",  # seconds for one input: a hang is a finding too
        "-rss_limit_mb=3072",
        "-print_final_stats=1",
    ]
    if args.seconds:
        flags.append(f"-max_total_time={args.seconds}")
    if args.runs:
        flags.append(f"-runs={args.runs}")
    # libFuzzer writes new inputs into the first folder only: the committed seeds stay as they are.
    argv = [sys.argv[0], *flags, *args.libfuzzer, str(work), str(CORPUS / name)]
    print(f"fuzz {name}: {' '.join(argv[1:])}", flush=True)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.runner")
    parser.add_argument("target", nargs="?")
    parser.add_argument("--list", action="store_true", help="print the targets")
    parser.add_argument("--seconds", type=int, default=0, help="stop after N seconds")
    parser.add_argument("--runs", type=int, default=0, help="stop after N inputs")
    parser.add_argument("--work", help="folder for the inputs the fuzzer finds (kept between runs)")
    parser.add_argument("--artifacts", help="folder for crashing inputs (default: --work)")
    parser.add_argument("--replay", nargs="*", type=Path, help="run these inputs without atheris")
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    if not args.target:
        parser.error("a target is required")
    if args.replay is not None:
        module = load(args.target)
        quiet_logs()
        files = args.replay or [p for p, _ in corpus_inputs(args.target)]
        return replay(module.make(), files)
    return fuzz(args.target, args)


if __name__ == "__main__":
    # Run as the importable module, so the targets and this entry point share one recorder.
    from tests.fuzz import runner

    sys.exit(runner.main())
