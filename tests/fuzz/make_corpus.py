"""Writes the seed corpora, tests/fuzz/corpus/<target>/<seed name>, from each target's seeds():
real exchanges of the engine, real ESP packets, the example manifests and real API requests.

    python -m tests.fuzz.make_corpus [TARGET...]
"""

from __future__ import annotations

import hashlib
import shutil
import sys

from tests.fuzz.runner import CORPUS, TARGETS, load, quiet_logs


def main(names: list[str]) -> int:
    quiet_logs()
    for name in names or TARGETS:
        folder = CORPUS / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        count = 0
        for label, data in load(name).seeds():
            # The digest keeps names unique and the same for the same bytes.
            (folder / f"{label}-{hashlib.sha256(data).hexdigest()[:8]}").write_bytes(data)
            count += 1
        print(f"{name}: {count} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
