"""Run by the wheel tests with an installed meshsec's Python (isolated mode, outside the source
tree): imports every module under the given top-level packages and checks each came from that
installation. Prints one line per failure and exits 1 if there was any."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import sysconfig
from pathlib import Path


def main(packages: list[str], skip: list[str]) -> int:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    failures: list[str] = []
    imported = 0
    for top in packages:
        root = importlib.import_module(top)
        names = [top] + [m.name for m in pkgutil.walk_packages(root.__path__, top + ".")]
        for name in names:
            if name.endswith(".__main__") or any(name == s or name.startswith(s + ".") for s in skip):
                continue
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # report every module that fails, not just the first
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            origin = Path(module.__file__ or "").resolve()
            if site not in origin.parents:
                failures.append(f"{name}: imported from {origin}, not from {site}")
            imported += 1
    for line in failures:
        print(line)
    print(f"imported {imported} modules")
    return 1 if failures else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    skip = [a.removeprefix("--skip=") for a in args if a.startswith("--skip=")]
    sys.exit(main([a for a in args if not a.startswith("--skip=")], skip))
