"""Target: manifests through to the mesh computation: YAML text -> load_yaml (controller/resources)
-> MeshIndex.apply -> every node's desired tunnels (controller/mesh). Bad input: ValidationError."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from meshsec.controller.mesh import MeshIndex, Upsert
from meshsec.controller.resources import ValidationError, load_yaml

EXAMPLES = Path(__file__).parents[2] / "deploy" / "examples"
MAX_LEN = 4096


def make() -> Callable[[bytes], None]:
    def one_input(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        try:
            resources = load_yaml(text)
            index = MeshIndex()
            index.apply([Upsert(r) for r in resources])
        except ValidationError:
            return
        for node in index.nodes():
            index.desired_tunnels(node)

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs = path.read_bytes().split(b"\n---")
        # The whole file, and each growing prefix of its documents (sites only, then nodes, ...).
        for n in range(1, len(docs) + 1):
            data = b"\n---".join(docs[:n])
            if len(data) <= MAX_LEN:
                yield f"{path.stem}-{n}", data
