"""meshsec's sans-IO IKEv2 engine (RFC 7296). See docs/ike.md for the API and a usage example.

The names below are the public surface an adapter or agent needs; everything else is internal."""

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import ChildConfig, ConfigError, IkeConfig, RetransmitConfig
from meshsec.agent.ike.crypto import DhFactory, KeyExchange, default_dh_factory
from meshsec.agent.ike.events import (
    AddressesUpdated,
    AddressUpdateFailed,
    Algorithms,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    InitialContactReceived,
    LivenessChecked,
    PeerDead,
    PortsChanged,
    RekeyFailed,
)
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.keys import DirectionKeys
from meshsec.agent.ike.natt import NATT_KEEPALIVE, NON_ESP_MARKER, add_non_esp_marker, classify_4500
from meshsec.agent.ike.random import DeterministicRandom, Random, SystemRandom
from meshsec.agent.ike.responder import Responder, ResponderSettings
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram, SpiAllocator, State
from meshsec.agent.ike.table import IkeSaTable
from meshsec.agent.ike.ts import Ts

__all__ = [
    "NATT_KEEPALIVE",
    "NON_ESP_MARKER",
    "Address",
    "AddressUpdateFailed",
    "AddressesUpdated",
    "Algorithms",
    "ChildConfig",
    "ChildSaDeleted",
    "ChildSaEstablished",
    "ChildSaFailed",
    "ChildSaRekeyed",
    "ConfigError",
    "DeterministicRandom",
    "DhFactory",
    "DirectionKeys",
    "Event",
    "FailureReason",
    "Identity",
    "IkeConfig",
    "IkeSa",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
    "IkeSaRekeyed",
    "IkeSaTable",
    "InitialContactReceived",
    "KeyExchange",
    "LivenessChecked",
    "OutgoingDatagram",
    "PeerDead",
    "PortsChanged",
    "Random",
    "RekeyFailed",
    "Responder",
    "ResponderSettings",
    "RetransmitConfig",
    "SpiAllocator",
    "State",
    "SystemRandom",
    "Ts",
    "add_non_esp_marker",
    "classify_4500",
    "default_dh_factory",
]
