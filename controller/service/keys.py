"""Where the controller keeps things in the store, all under one prefix (default ``/meshsec/``)."""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.controller.resources.model import Kind


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "/meshsec/"

    @property
    def resources(self) -> str:
        return f"{self.prefix}resources/"

    def resource(self, kind: Kind, name: str) -> str:
        return f"{self.resources}{kind.value}/{name}"

    @property
    def numbering(self) -> str:
        """Written by each replica once it has loaded; in the resources watch so that every replica
        renumbers its slices at the same revision (`MeshState._renumber`). Not a resource kind."""
        return f"{self.resources}.numbering"

    @property
    def guard(self) -> str:
        """Bumped by every resource write: a write validated against revision r commits only if
        nothing else was written since (see `MeshState.commit`)."""
        return f"{self.prefix}guard/resources"

    @property
    def status(self) -> str:
        return f"{self.prefix}status/"

    @property
    def events(self) -> str:
        return f"{self.prefix}events/"

    @property
    def secrets(self) -> str:
        """External gateway PSKs (``secrets/<name>``, raw bytes), written by AdminService.PutSecret."""
        return f"{self.prefix}secrets/"

    def secret(self, name: str) -> str:
        return f"{self.secrets}{name}"

    @property
    def psk_master(self) -> str:
        return f"{self.prefix}ca/psk-master"

    @property
    def remote_access(self) -> str:
        """Leases and credentials of remote-access clients (controller/remoteaccess/)."""
        return f"{self.prefix}remote-access/"

    @property
    def election(self) -> str:
        return f"{self.prefix}election/"
