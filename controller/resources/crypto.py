"""Parsing a ``crypto`` block into a CryptoProfile: defaults, proposal rules, PFS and lifetimes."""

from __future__ import annotations

from meshsec.controller.resources.algorithms import (
    Proposal,
    ProposalError,
    ProposalKind,
    parse_proposal,
    unsupported_by_agents,
)
from meshsec.controller.resources.cloud import CloudProfile
from meshsec.controller.resources.fields import Fields
from meshsec.controller.resources.model import CryptoProfile, Dpd, DpdAction

CRYPTO_FIELDS = (
    "ikeProposals",
    "espProposals",
    "ikeLifetimeSeconds",
    "childLifetimeSeconds",
    "pfs",
    "dpd",
)


def parse_crypto(
    f: Fields, profile: CloudProfile, child_kind: ProposalKind, defaults: CryptoProfile | None = None
) -> CryptoProfile:
    """Fills what ``f`` leaves out from ``defaults`` (``profile.defaults`` unless given); everything
    given is checked against the profile (what the peer accepts) and against what meshsec agents
    implement."""
    f.only(*CRYPTO_FIELDS)
    defaults = defaults or profile.defaults
    pfs = f.boolean("pfs", defaults.pfs)

    ike = _proposals(f, "ikeProposals", ProposalKind.IKE, profile, profile.ike_algorithms)
    if not ike:
        ike = [parse_proposal(p, ProposalKind.IKE) for p in defaults.ike_proposals]

    child = _proposals(f, "espProposals", child_kind, profile, profile.esp_algorithms)
    if child:
        for i, proposal in enumerate(child):
            if pfs and proposal.dh is None:
                f.error(f"espProposals[{i}]", f"{proposal.text!r} has no dh group but pfs is true")
            if not pfs and proposal.dh is not None:
                f.error(
                    f"espProposals[{i}]", f"{proposal.text!r} has dh group {proposal.dh} but pfs is false"
                )
        child_texts = tuple(p.text for p in child)
    else:
        child_texts = _default_child(defaults, child_kind, pfs, ike[0])

    low, high = profile.ike_lifetime_range
    ike_lifetime = f.integer("ikeLifetimeSeconds", _clamp(defaults.ike_lifetime_s, low, high), low, high)
    low, high = profile.child_lifetime_range
    child_lifetime = f.integer(
        "childLifetimeSeconds", _clamp(defaults.child_lifetime_s, low, high), low, high
    )
    if child_lifetime > ike_lifetime and f.has("childLifetimeSeconds"):
        # A CHILD_SA cannot outlive the IKE SA that rekeys it without a reauthentication.
        f.error("childLifetimeSeconds", f"{child_lifetime} exceeds ikeLifetimeSeconds {ike_lifetime}")
    return CryptoProfile(
        ike_proposals=tuple(p.text for p in ike),
        esp_proposals=child_texts,
        ike_lifetime_s=ike_lifetime,
        child_lifetime_s=child_lifetime,
        pfs=pfs,
        dpd=_dpd(f.sub("dpd"), defaults.dpd) if f.has("dpd") else defaults.dpd,
    )


def _proposals(
    f: Fields, key: str, kind: ProposalKind, profile: CloudProfile, accepted: frozenset[str]
) -> list[Proposal]:
    out: list[Proposal] = []
    for i, text in enumerate(f.strings(key)):
        path = f"{key}[{i}]"
        try:
            proposal = parse_proposal(text, kind)
        except ProposalError as exc:
            f.error(path, str(exc))
            continue
        refused = [n for n in proposal.names() if n not in accepted]
        if refused:
            f.error(path, f"{', '.join(refused)} not accepted by the {profile.name.value} profile")
            continue
        missing = unsupported_by_agents(proposal)
        if missing:
            f.error(path, f"{', '.join(missing)}: not supported by meshsec agents yet")
            continue
        out.append(proposal)
    return out


def _default_child(defaults: CryptoProfile, kind: ProposalKind, pfs: bool, ike: Proposal) -> tuple[str, ...]:
    default = parse_proposal(defaults.esp_proposals[0], ProposalKind.ESP)
    base = "sha256" if kind is ProposalKind.AH else default.encryption or "aes256gcm16"
    if not pfs:
        return (base,)
    # PFS runs the defaults' key exchanges, or else the IKE SA's, additional ones included.
    kex = default if kind is ProposalKind.ESP and default.dh else ike
    if kex.dh is None:
        return (base,)
    additional = [f"ke{k}_{m}" for k, m in kex.additional]
    return ("-".join([base, kex.dh, *additional]),)


def _dpd(f: Fields, defaults: Dpd) -> Dpd:
    f.only("delaySeconds", "timeoutSeconds", "action")
    delay = f.integer("delaySeconds", defaults.delay_s, 1, 3600)
    timeout = f.integer("timeoutSeconds", max(defaults.timeout_s, delay), 1, 86400)
    if timeout < delay:
        f.error("timeoutSeconds", f"{timeout} is shorter than delaySeconds {delay}")
    return Dpd(delay, timeout, f.enum("action", DpdAction, defaults.action))


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)
