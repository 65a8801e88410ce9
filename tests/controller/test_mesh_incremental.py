"""Property tests: the incremental index agrees with a from-scratch reference after any history.

Random batches of upserts and deletes over a small universe of sites, nodes, policies and an
external gateway (every topology and both scopes, with names that can dangle, prefixes that
can overlap and hub selectors that can select nothing) are applied to one MeshIndex. After every
batch:
- the batch is rejected exactly when a from-scratch validation of the resulting resource set
  finds errors, and a rejected batch leaves the index untouched (all-or-nothing);
- the deltas, applied to a per-node model, reproduce the naive reference mesh exactly, with
  base versions matching, and so does `desired_tunnels`;
- re-applying the same batch yields no delta (idempotence).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshsec.controller.mesh import Delete, MeshIndex, PeerKind, Tunnel, Upsert
from meshsec.controller.mesh import index as index_module
from meshsec.controller.resources import ValidationError, parse_resource
from meshsec.controller.resources.model import Kind, Mode, Resource, resource_key
from tests.controller.test_mesh_support import external, node, parsed, policy, reference_state, site

SITE_NAMES = ["s0", "s1", "s2"]
NODE_NAMES = [f"n{i}" for i in range(6)]
POLICY_NAMES = ["p0", "p1"]


@st.composite
def site_doc(draw: st.DrawFn) -> dict[str, Any]:
    i = draw(st.integers(0, len(SITE_NAMES) - 1))
    prefixes = [f"198.19.{i}.0/24"]
    if draw(st.integers(0, 9)) == 0:
        prefixes = ["198.19.0.0/23"]  # overlaps s0/s1 unless it is s0 alone
    labels = draw(
        st.fixed_dictionaries({}, optional={"tier": st.sampled_from(["a", "b"]), "hub": st.just("yes")})
    )
    gateways = draw(st.sampled_from([{"role": "gw"}, {}]))
    return site(SITE_NAMES[i], prefixes, labels, gateways)


@st.composite
def node_doc(draw: st.DrawFn) -> dict[str, Any]:
    i = draw(st.integers(0, len(NODE_NAMES) - 1))
    labels = draw(
        st.fixed_dictionaries({}, optional={"tier": st.sampled_from(["a", "b"]), "hub": st.just("yes")})
    )
    if draw(st.integers(0, 3)) > 0:
        labels["role"] = "gw"
    public = [f"198.18.0.{10 + i + draw(st.integers(0, 1)) * 50}"] if draw(st.booleans()) else None
    private = [f"198.18.1.{10 + i}"] if draw(st.booleans()) or public is None else None
    site_name = "s9" if draw(st.integers(0, 15)) == 0 else draw(st.sampled_from(SITE_NAMES))
    ike_id = "shared.test" if draw(st.integers(0, 15)) == 0 else None
    return node(NODE_NAMES[i], site_name, public, private, labels, ike_id)


@st.composite
def policy_doc(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(POLICY_NAMES))
    topology = draw(st.sampled_from(["full-mesh", "hub-and-spoke", "partial"]))
    scope = draw(st.sampled_from(["node", "site"]))
    members = draw(
        st.sampled_from(
            [
                {},
                {"matchLabels": {"tier": "a"}},
                {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
            ]
        )
    )
    extra: dict[str, Any] = {}
    if topology == "hub-and-spoke":
        hubs: dict[str, Any] = {"selector": {"matchLabels": {"hub": "yes"}}}
        if draw(st.booleans()):
            hubs["spokeToSpoke"] = True
            if draw(st.booleans()):
                hubs["transitPrefixes"] = [draw(st.sampled_from(["198.19.0.0/16", "198.18.0.0/15"]))]
        extra["hubs"] = hubs
    if topology == "partial":
        names = NODE_NAMES if scope == "node" else SITE_NAMES
        pairs = draw(
            st.lists(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True), max_size=2)
        )
        rules = (
            [{"from": {"matchLabels": {"tier": "a"}}, "to": {"matchLabels": {"tier": "b"}}}]
            if draw(st.booleans()) or not pairs
            else []
        )
        extra["partial"] = {"pairs": pairs, "rules": rules}
    if draw(st.booleans()):
        extra["auth"] = {"method": "psk", "pskGeneration": draw(st.integers(1, 2))}
    if scope == "node" and draw(st.integers(0, 4)) == 0:
        extra["mode"] = "transport"
    return policy(name, topology, scope, members, **extra)


@st.composite
def external_doc(draw: st.DrawFn) -> dict[str, Any]:
    sites = draw(st.lists(st.sampled_from(SITE_NAMES), min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0:
        sites.append("s9")
    prefixes = [draw(st.sampled_from(["198.19.200.0/24", "198.19.1.0/25"]))]
    return external("e0", sites, prefixes, profile=draw(st.sampled_from(["aws", "azure", "gcp"])))


def _delete(kind: Kind, names: list[str]) -> st.SearchStrategy[Delete]:
    return st.sampled_from(names).map(lambda n: Delete(kind, n))


NODE_UPSERT = node_doc().map(lambda d: Upsert(parse_resource(d)))
CHANGE = st.one_of(
    site_doc().map(lambda d: Upsert(parse_resource(d))),
    NODE_UPSERT,
    NODE_UPSERT,
    NODE_UPSERT,
    policy_doc().map(lambda d: Upsert(parse_resource(d))),
    policy_doc().map(lambda d: Upsert(parse_resource(d))),
    external_doc().map(lambda d: Upsert(parse_resource(d))),
    _delete(Kind.NODE, NODE_NAMES),
    _delete(Kind.NODE, NODE_NAMES),
    st.one_of(_delete(Kind.SITE, SITE_NAMES), _delete(Kind.EXTERNAL_GATEWAY, ["e0"])),
    _delete(Kind.MESH_POLICY, POLICY_NAMES),
)
BATCH = st.lists(CHANGE, min_size=1, max_size=3, unique_by=lambda c: c.key)


@st.composite
def history(draw: st.DrawFn) -> list[list[Upsert | Delete]]:
    """A valid start (every site, a policy, a few nodes) so that meshes exist, then random batches."""
    base = [
        Upsert(
            parse_resource(
                site(
                    s,
                    [f"198.19.{i}.0/24"],
                    draw(st.sampled_from([{}, {"tier": "a"}])) | ({"hub": "yes"} if i == 0 else {}),
                    {"role": "gw"},
                )
            )
        )
        for i, s in enumerate(SITE_NAMES)
    ]
    base.append(Upsert(parse_resource(policy("p0", "full-mesh", draw(st.sampled_from(["node", "site"]))))))
    nodes = draw(st.lists(node_doc(), min_size=2, max_size=6, unique_by=lambda d: d["metadata"]["name"]))
    base += [Upsert(parse_resource(d)) for d in nodes if d["spec"]["site"] != "s9"]
    return [base, *draw(st.lists(BATCH, min_size=1, max_size=12))]


HISTORY = history()


def _would_be(current: dict[tuple[Kind, str], Resource], batch: list[Upsert | Delete]) -> list[Resource]:
    result = dict(current)
    for change in batch:
        if isinstance(change, Upsert):
            result[change.key] = change.resource
        else:
            result.pop(change.key, None)
    return list(result.values())


def _from_scratch_errors(resources: list[Resource]) -> list[str]:
    fresh = MeshIndex()
    fresh.apply((Upsert(r) for r in resources), validate=False)
    return [str(e) for e in fresh.validate_all()]


def _assert_ends_agree(state: dict[str, dict[str, Tunnel]]) -> None:
    """Both ends of a node-to-node tunnel share id and auth, mirror selectors, and one initiates."""
    for name, tunnels in state.items():
        for t in tunnels.values():
            if t.peer_kind is not PeerKind.NODE:
                continue
            other = state[t.peer][t.id]
            assert (other.peer, other.local_ike_id, other.remote_ike_id) == (
                name,
                t.remote_ike_id,
                t.local_ike_id,
            )
            assert other.auth == t.auth and other.initiator != t.initiator
            if t.children[0].mode is Mode.TUNNEL:
                assert (other.children[0].local_ts, other.children[0].remote_ts) == (
                    t.children[0].remote_ts,
                    t.children[0].local_ts,
                )


def _non_empty(state: dict[str, dict[str, Tunnel]]) -> dict[str, dict[str, Tunnel]]:
    return {n: t for n, t in state.items() if t}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HISTORY)
def test_incremental_matches_from_scratch(history: list[list[Upsert | Delete]]) -> None:
    index = MeshIndex()
    model: dict[str, dict[str, Tunnel]] = {}
    versions: dict[str, int] = {}
    for batch in history:
        current = {resource_key(r): r for r in index.resources()}
        would_be = _would_be(current, batch)
        expected_errors = _from_scratch_errors(would_be)
        try:
            deltas = index.apply(batch)
        except ValidationError as exc:
            assert expected_errors, f"rejected a batch a full validation accepts: {exc}"
            assert {resource_key(r): r for r in index.resources()} == current
            continue
        assert not expected_errors, f"accepted a batch a full validation rejects: {expected_errors}"
        for name, delta in deltas.items():
            assert delta, "an empty delta was returned"
            assert delta.base_version == versions.get(name, 0)
            assert delta.version == delta.base_version + 1 == index.version(name)
            versions[name] = delta.version
            tunnels = model.setdefault(name, {})
            for tid in delta.removals:
                assert tid in tunnels, "removal of a tunnel the node never had"
                del tunnels[tid]
            for t in delta.upserts:
                assert t.local_node == name
                assert tunnels.get(t.id) != t, "upsert of an unchanged tunnel"
                tunnels[t.id] = t
        reference = _non_empty(reference_state(would_be))
        assert _non_empty(model) == reference
        _assert_ends_agree(reference)
        assert (
            _non_empty({n: {t.id: t for t in index.desired_tunnels(n)} for n in index.nodes()}) == reference
        )
        assert index.apply(batch) == {}, "re-applying the same batch must not produce a delta"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(CHANGE, min_size=1, max_size=12, unique_by=lambda c: c.key), st.randoms(use_true_random=False)
)
def test_replicas_agree_whatever_the_order(changes: list[Upsert | Delete], rnd: Any) -> None:
    upserts = [c for c in changes if isinstance(c, Upsert)]
    shuffled = list(upserts)
    rnd.shuffle(shuffled)
    a, b = MeshIndex(), MeshIndex()
    # One change per batch, unvalidated: intermediate states may dangle and must still converge.
    for change in upserts:
        a.apply([change], validate=False)
    for change in shuffled:
        b.apply([change], validate=False)
    assert a.nodes() == b.nodes()
    for name in a.nodes():
        assert a.desired_tunnels(name) == b.desired_tunnels(name)
    # As single validated batches, both orders give identical deltas, or are both rejected.
    outcomes = []
    for order in (upserts, shuffled):
        try:
            outcomes.append(MeshIndex().apply(order))
        except ValidationError as exc:
            outcomes.append(exc.errors)  # type: ignore[arg-type]
    assert outcomes[0] == outcomes[1]


def _full_mesh(n: int) -> MeshIndex:
    index = MeshIndex()
    docs = [
        site("s0", ["198.19.0.0/24"]),
        site("s1", ["198.19.1.0/24"]),
        policy("mesh", "full-mesh", "node"),
        policy(
            "hs",
            "hub-and-spoke",
            "node",
            {"matchLabels": {"hs": "yes"}},
            hubs={"selector": {"matchLabels": {"hub": "yes"}}},
        ),
    ]
    docs += [node(f"m{i:04d}", f"s{i % 2}", public=[f"198.18.{i // 250}.{i % 250 + 1}"]) for i in range(n)]
    index.apply((Upsert(r) for r in parsed(*docs)), deltas=False)
    return index


def test_join_touches_each_peer_once_and_builds_only_its_edges(monkeypatch: Any) -> None:
    index = _full_mesh(300)
    calls = []
    real = index_module.node_pair

    def counting(*args: Any) -> Any:
        calls.append(args[1].metadata.name)
        return real(*args)

    monkeypatch.setattr(index_module, "node_pair", counting)
    deltas = index.apply([Upsert(parse_resource(node("joiner", "s0", public=["198.18.9.9"])))])
    assert len(calls) == 300  # one pair built per existing member, none between old members
    assert len(deltas) == 301
    assert all(len(d.upserts) == 1 and not d.removals for n, d in deltas.items() if n != "joiner")
    assert len(deltas["joiner"].upserts) == 300

    calls.clear()
    deltas = index.apply([Delete(Kind.NODE, "joiner")])
    assert len(calls) == 300  # only the leaver's own edges, computed before it left
    assert all(d.removals and not d.upserts for d in deltas.values())
    assert len(deltas["joiner"].removals) == 300


def test_spoke_join_touches_only_the_hubs(monkeypatch: Any) -> None:
    index = _full_mesh(0)
    hubs = [
        node(f"hub{i}", "s0", public=[f"198.18.5.{i + 1}"], labels={"hs": "yes", "hub": "yes"})
        for i in range(2)
    ]
    spokes = [
        node(f"spoke{i:03d}", "s1", private=[f"198.18.6.{i + 1}"], labels={"hs": "yes"}) for i in range(200)
    ]
    index.apply((Upsert(r) for r in parsed(*hubs, *spokes)), deltas=False)
    mesh_policy = index.get(Kind.MESH_POLICY, "mesh")
    assert mesh_policy is not None
    index.apply([Delete(Kind.MESH_POLICY, "mesh")])
    calls = []
    real = index_module.node_pair
    monkeypatch.setattr(index_module, "node_pair", lambda *a: calls.append(1) or real(*a))
    deltas = index.apply(
        [Upsert(parse_resource(node("spoke999", "s1", private=["198.18.7.1"], labels={"hs": "yes"})))]
    )
    assert len(calls) == 2
    assert sorted(deltas) == ["hub0", "hub1", "spoke999"]
