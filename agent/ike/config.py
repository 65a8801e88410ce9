"""Engine configuration: one IkeConfig per connection, one ChildConfig per CHILD_SA it carries.
Invalid values are rejected at construction with a message naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshsec.agent.ike.certs import Credentials
from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.eap.users import EapClientConfig, EapServerConfig
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.kem import ML_KEM, UnsupportedKem, check_supported
from meshsec.agent.ike.proposals import ProposalSpec, parse_proposals
from meshsec.agent.ike.revocation import RevocationList
from meshsec.agent.ike.ts import Ts
from meshsec.agent.ike.virtual_ip import AddressPool
from meshsec.common.secrets import Secret


class ConfigError(ValueError):
    pass


DPD_ACTIONS = ("clear", "restart", "hold")


def _check_lifetimes(where: str, rekey: int, life: int, rand: int | None) -> None:
    if rekey < 0 or life < 0:
        raise ConfigError(f"{where}: lifetimes must be >= 0")
    if life and life < rekey:
        raise ConfigError(f"{where}: life_time must be >= rekey_time")
    if rand is not None and (rand < 0 or (rekey and rand >= rekey)):
        raise ConfigError(f"{where}: rand_time must be >= 0 and < rekey_time")


@dataclass(frozen=True, slots=True)
class RetransmitConfig:
    """strongSwan's defaults: timeout * base**n for n = 0..tries, then give up (~165 s)."""

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.base < 1 or self.tries < 0:
            raise ConfigError(f"retransmit: invalid timeout/base/tries {self}")

    def delay(self, attempt: int) -> float:
        return float(self.timeout * self.base**attempt)


@dataclass(frozen=True, slots=True)
class ChildConfig:
    name: str
    local_ts: tuple[Ts, ...]
    remote_ts: tuple[Ts, ...]
    proposals: str = "aes256gcm16-x25519,aes128-sha256-x25519"
    protocol: ProtocolId = ProtocolId.ESP
    mode: str = "tunnel"
    # Soft (rekey) and hard (delete) lifetimes. Seconds run on the engine's timers; bytes and
    # packets are counted by the data plane, whose expire events come back via
    # IkeSa.child_expired. 0 disables a limit. The rekey fires rand_time (default: the gap
    # to life_time) * a random fraction early, so a mesh does not rekey in lockstep.
    rekey_time: int = 3600
    life_time: int = 3960
    rand_time: int | None = None
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    specs: tuple[ProposalSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"child {self.name!r}"
        if self.mode not in ("tunnel", "transport"):
            raise ConfigError(f"{where}: mode must be 'tunnel' or 'transport', not {self.mode!r}")
        if self.protocol not in (ProtocolId.ESP, ProtocolId.AH):
            raise ConfigError(f"{where}: protocol must be ESP or AH")
        if not self.local_ts or not self.remote_ts:
            raise ConfigError(f"{where}: local_ts and remote_ts must not be empty")
        _check_lifetimes(where, self.rekey_time, self.life_time, self.rand_time)
        for soft, hard in (("rekey_bytes", "life_bytes"), ("rekey_packets", "life_packets")):
            s, h = getattr(self, soft), getattr(self, hard)
            if s < 0 or h < 0 or (s and h and h < s):
                raise ConfigError(f"{where}: {hard} must be >= {soft} (and both >= 0)")
        try:
            specs = parse_proposals(self.proposals, self.protocol)
        except ValueError as exc:
            raise ConfigError(f"{where}: proposals: {exc}") from exc
        check_key_exchanges(where, specs)
        object.__setattr__(self, "specs", specs)


def check_key_exchanges(where: str, specs: tuple[ProposalSpec, ...]) -> None:
    """Refuses, by name, key exchange methods this process cannot run: ML-KEM needs a
    `cryptography`/OpenSSL that has it. (RFC 9370 additional key exchanges run in IKE_INTERMEDIATE
    for a new IKE SA and in CREATE_CHILD_SA + IKE_FOLLOWUP_KE for rekeys and CHILD_SAs.)"""
    for spec in specs:
        addke = spec.additional_key_exchanges()
        for method in {*spec.dh_groups(), *(m for ms in addke.values() for m in ms)}:
            if method in ML_KEM:
                try:
                    check_supported(method)
                except UnsupportedKem as exc:
                    raise ConfigError(f"{where}: proposal {spec.text!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class IkeConfig:
    name: str
    local_id: str
    remote_id: str  # "%any" accepts every peer identity (responder only)
    psk: Secret | None  # None with `credentials` (certificate authentication)
    proposals: str = "aes256gcm16-prfsha256-x25519,aes128-sha256-ecp256"
    children: tuple[ChildConfig, ...] = ()
    retransmit: RetransmitConfig = RetransmitConfig()
    prefer_own_proposals: bool = True  # responder: our order wins (strongSwan default)
    send_initial_contact: bool = True
    natt_keepalive: float = 20.0
    # Pretend to be behind a NAT (strongSwan's encap=yes) so ESP is always UDP-encapsulated.
    force_encap: bool = False
    # IKE SA rekeying: new SPIs and keys after rekey_time (minus up to rand_time, default
    # 10 % of rekey_time); deleted after over_time more if the rekey never succeeds.
    rekey_time: int = 14400
    rand_time: int | None = None
    over_time: int | None = None
    # Dead peer detection: a liveness check after dpd_delay seconds without any inbound
    # traffic (0 = off). The peer is declared dead when it stays unanswered for the
    # retransmit schedule; then dpd_action: "clear" (delete everything), "restart" (a new
    # IKE SA with the same config, initiator side), "hold" (keep the CHILD_SAs' policies).
    dpd_delay: float = 0.0
    dpd_action: str = "clear"
    # Reauthentication (0 = off): after reauth_time (jittered like rekey_time) a complete new
    # IKE SA with fresh authentication and CHILD_SAs is made; the old one is deleted only once
    # the new one carries everything (make-before-break, no INITIAL_CONTACT).
    reauth_time: int = 0
    # Certificate authentication for both directions (we sign, the peer must present a
    # certificate chaining to one of credentials.trusted); None means PSK.
    credentials: Credentials | None = None
    # RFC 7383: announce IKEV2_FRAGMENTATION_SUPPORTED and split encrypted messages longer
    # than fragment_size bytes (the IKE message, without IP/UDP headers) when the peer agrees.
    fragmentation: bool = True
    fragment_size: int = 1200
    # Gateway for road warriors (RFC 7296 2.19): clients must ask for a virtual address in a
    # CFG_REQUEST, get it from this pool, and their CHILD_SAs are narrowed to it.
    address_pool: AddressPool | None = field(default=None, compare=False)
    # Peer certificates with these serials are refused (and the agent closes SAs that use one).
    revocations: RevocationList | None = field(default=None, compare=False)
    # Road warrior: ask for a virtual address of these families ("4", "6", "46"; "" = none).
    request_virtual_ip: str = ""
    # RFC 4555 MOBIKE: announce MOBIKE_SUPPORTED in IKE_AUTH; with the peer agreeing, its
    # UPDATE_SA_ADDRESSES moves the SA (a roaming client), and `IkeSa.roam` moves ours.
    mobike: bool = False
    # MOBIKE: refuse an address update across a NAT (NO_NATS_ALLOWED in our updates, RFC 4555 3.9).
    mobike_no_nats: bool = False
    # MOBIKE return routability: a COOKIE2 in our updates the answer must echo (RFC 4555 3.6).
    mobike_cookie2: bool = True
    # EAP in IKE_AUTH (RFC 7296 2.16, exchanges/eap_auth.py). `eap` (a gateway): peers of this
    # connection authenticate with EAP, we with our certificate (`credentials`). `eap_client`
    # (a road warrior): we authenticate with EAP-MSCHAPv2; the gateway's certificate must chain
    # to `credentials.trusted`.
    eap: EapServerConfig | None = None
    eap_client: EapClientConfig | None = None
    local_identity: Identity = field(init=False, repr=False, compare=False)
    remote_identity: Identity | None = field(init=False, repr=False, compare=False)
    specs: tuple[ProposalSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"connection {self.name!r}"
        if (self.eap is not None or self.eap_client is not None) and self.credentials is None:
            raise ConfigError(
                f"{where}: EAP needs credentials (the gateway's certificate, the CAs it chains to)"
            )
        if self.eap is not None and self.credentials is not None and not self.credentials.can_sign:
            raise ConfigError(f"{where}: an EAP gateway signs with its certificate; credentials have none")
        if self.credentials is not None and not self.credentials.can_sign and self.eap_client is None:
            raise ConfigError(f"{where}: credentials without a certificate only suit an EAP road warrior")
        if self.eap is not None and self.eap_client is not None:
            raise ConfigError(f"{where}: eap (gateway) and eap_client (road warrior) exclude each other")
        if self.credentials is None and (not isinstance(self.psk, Secret) or len(self.psk) == 0):
            raise ConfigError(f"{where}: psk must be a non-empty Secret (or give credentials)")
        try:
            object.__setattr__(self, "local_identity", Identity.parse(self.local_id))
            remote = None if self.remote_id == "%any" else Identity.parse(self.remote_id)
            object.__setattr__(self, "remote_identity", remote)
        except ValueError as exc:
            raise ConfigError(f"{where}: identity: {exc}") from exc
        try:
            object.__setattr__(self, "specs", parse_proposals(self.proposals, ProtocolId.IKE))
        except ValueError as exc:
            raise ConfigError(f"{where}: proposals: {exc}") from exc
        check_key_exchanges(where, self.specs)
        names = [c.name for c in self.children]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: duplicate child names {names}")
        if self.natt_keepalive < 0:
            raise ConfigError(f"{where}: natt_keepalive must be >= 0")
        over = self.over_time if self.over_time is not None else max(1, self.rekey_time // 10)
        _check_lifetimes(where, self.rekey_time, self.rekey_time + over, self.rand_time)
        if not 300 <= self.fragment_size <= 65000:
            raise ConfigError(f"{where}: fragment_size must be 300..65000 bytes")
        if self.reauth_time < 0:
            raise ConfigError(f"{where}: reauth_time must be >= 0")
        if self.dpd_delay < 0:
            raise ConfigError(f"{where}: dpd_delay must be >= 0")
        if self.request_virtual_ip not in ("", "4", "6", "46"):
            raise ConfigError(f"{where}: request_virtual_ip must be '', '4', '6' or '46'")
        if self.request_virtual_ip and self.address_pool is not None:
            raise ConfigError(f"{where}: a connection either hands out virtual addresses or asks for one")
        if self.dpd_action not in DPD_ACTIONS:
            raise ConfigError(f"{where}: dpd_action must be one of {', '.join(DPD_ACTIONS)}")

    def matches_remote(self, ident: Identity) -> bool:
        return self.remote_identity is None or self.remote_identity == ident

    def child(self, name: str) -> ChildConfig | None:
        return next((c for c in self.children if c.name == name), None)
