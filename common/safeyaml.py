"""YAML from people we do not trust (manifests, agent configs): yaml.SafeLoader with bounds.
SafeLoader alone composes 20,000-deep nesting by recursion (RecursionError), accepts an alias
inside its own anchor (a cyclic object that later code recurses into for ever) and lets a
588-byte "billion laughs" file expand to 10^9 nodes. Here the text size, the nesting depth and
the nodes reachable through aliases are capped, and a recursive alias is an error; each limit
fails as a YAMLError with the line, like any other syntax error."""

from __future__ import annotations

from typing import Any

import yaml

# The controller's gRPC servers keep the default 4 MiB receive limit: a larger manifest could
# never be applied anyway, so it is refused before parsing.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 100
MAX_NODES = 1_000_000  # nodes after alias expansion; a 4 MiB file holds at most ~1M plain ones


class YamlLimitError(yaml.MarkedYAMLError):
    """A bound was exceeded; `problem` says which."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._size: dict[str, int] = {}  # nodes reachable from each finished anchor

    def _limit(self, problem: str) -> YamlLimitError:
        return YamlLimitError(problem=problem, problem_mark=self.peek_event().start_mark)  # type: ignore[no-untyped-call]

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            anchor = event.anchor or ""
            if anchor in self._open:
                raise self._limit(f"alias *{anchor} refers to its own anchor (a cycle)")
            self._count(self._size.get(anchor, 1))
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise self._limit(f"nested deeper than {MAX_DEPTH} levels")
        opened: str | None = getattr(event, "anchor", None)
        if opened is not None:
            self._open.add(opened)
        start = self._nodes
        self._count(1)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if opened is not None:
            self._open.discard(opened)
            self._size[opened] = self._nodes - start
        return node

    def _count(self, nodes: int) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise self._limit(f"expands to more than {MAX_NODES} nodes (aliases included)")


def _check_size(text: str) -> None:
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > MAX_YAML_BYTES:
        raise YamlLimitError(problem=f"{size} bytes is larger than the {MAX_YAML_BYTES}-byte limit")


def safe_load(text: str) -> Any:
    _check_size(text)
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def safe_load_all(text: str) -> list[Any]:
    _check_size(text)
    loader = _BoundedLoader(text)
    try:
        documents = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            documents.append(loader.get_data())
        return documents
    finally:
        loader.dispose()
