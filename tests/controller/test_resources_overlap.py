"""Prefix overlap queries (resources.overlap) against the pairwise definition they replace."""

from __future__ import annotations

import random
from ipaddress import IPv4Network, ip_network

from meshsec.controller.resources.model import Prefix
from meshsec.controller.resources.overlap import PrefixOwners, first_overlaps, nested_pairs, prefix_order


def _random_prefixes(rng: random.Random, count: int) -> list[Prefix]:
    base = int(IPv4Network("198.18.0.0/15").network_address)
    out: list[Prefix] = []
    for _ in range(count):
        length = rng.choice([15, 16, 20, 24, 24, 26, 28, 32])
        start = base + rng.randrange(1 << 17)
        out.append(IPv4Network((start >> (32 - length) << (32 - length), length)))
    return out


def test_overlapping_finds_exactly_the_pairwise_overlaps() -> None:
    rng = random.Random(18)
    stored = _random_prefixes(rng, 300)
    owners = PrefixOwners((p, i) for i, p in enumerate(stored))
    for query in [*_random_prefixes(rng, 200), ip_network("2001:db8::/32")]:
        expected = sorted(
            (p, i) for i, p in enumerate(stored) if p.version == query.version and p.overlaps(query)
        )
        assert sorted(owners.overlapping(query)) == expected


def test_first_overlaps_matches_a_scan_in_prefix_order() -> None:
    rng = random.Random(6)
    groups = {f"o{i}": sorted(set(_random_prefixes(rng, 4)), key=prefix_order) for i in range(60)}
    owners = PrefixOwners((p, name) for name, prefixes in groups.items() for p in prefixes)
    for name, mine in groups.items():
        expected = {}
        for other, theirs in groups.items():
            if other == name:
                continue
            hit = next(((a, b) for a in mine for b in theirs if a.overlaps(b)), None)
            if hit is not None:
                expected[other] = hit
        assert first_overlaps(mine, owners, skip=name) == expected


def test_nested_pairs_names_each_prefix_inside_another() -> None:
    prefixes = [ip_network(p) for p in ("198.19.0.0/16", "198.19.1.0/24", "198.19.1.128/25", "198.18.0.0/24")]
    prefixes.append(ip_network("2001:db8::/64"))
    assert list(nested_pairs(prefixes)) == [
        (ip_network("198.19.0.0/16"), ip_network("198.19.1.0/24")),
        (ip_network("198.19.1.0/24"), ip_network("198.19.1.128/25")),
    ]
