"""Kubernetes label selector text ("region=eu,tier!=edge,provider in (aws,gcp),!legacy")."""

from __future__ import annotations

import re

from meshsec.controller.resources.selector import LabelSelector, Operator, Requirement

_SET = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*$")


def _terms(text: str) -> list[str]:
    """Split on commas that are not inside a value set's parentheses."""
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t for t in terms if t.strip()]


def parse_selector(text: str) -> LabelSelector:
    """Raises ValueError naming the term it cannot read."""
    labels: list[tuple[str, str]] = []
    expressions: list[Requirement] = []
    for term in _terms(text):
        if m := _SET.match(term):
            values = tuple(sorted(v.strip() for v in m.group(3).split(",") if v.strip()))
            operator = Operator.IN if m.group(2) == "in" else Operator.NOT_IN
            expressions.append(Requirement(m.group(1), operator, values))
        elif m := _EQ.match(term):
            if m.group(2) == "!=":
                expressions.append(Requirement(m.group(1), Operator.NOT_IN, (m.group(3),)))
            else:
                labels.append((m.group(1), m.group(3)))
        elif m := _EXISTS.match(term):
            operator = Operator.DOES_NOT_EXIST if m.group(1) else Operator.EXISTS
            expressions.append(Requirement(m.group(2), operator))
        else:
            raise ValueError(f"cannot parse label selector term {term.strip()!r}")
    return LabelSelector(tuple(labels), tuple(expressions))
