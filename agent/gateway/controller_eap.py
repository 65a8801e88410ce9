"""Road warriors' EAP credentials from the controller (AgentService GetEapCredential): the NT
hash of an EAP-MSCHAPv2 user's password, or that a user is an EAP-TLS one, so a gateway keeps no
password table of its own and a changed password holds from the next login on.

A `UserLookup` for the engine, which asks synchronously: the first ask for an identity starts the
RPC and answers PENDING (the IKE_AUTH round waits unanswered); when the answer is back,
`on_ready(identity)` tells the agent to resume the waiting IKE SAs, whose next ask gets it. Each
answer serves one ask: the next login asks the controller again. Unknown identities, certificate
users and a controller that cannot answer all come back as "no such user", which the EAP method
refuses exactly like a wrong password. The NT hash stays inside a Secret and is never logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from meshsec.agent.ike.eap.users import PENDING, EapUser, UserPending
from meshsec.common.secrets import Secret
from meshsec.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
RPC_TIMEOUT = 5.0
MAX_IDENTITY = 253  # an EAP identity longer than this never reaches the lookup (server.py)


class ControllerEapUsers:
    def __init__(
        self,
        service: agent_pb2_grpc.AgentServiceAsyncStub,
        on_ready: Callable[[bytes], None],
        *,
        node: str = "",
    ) -> None:
        self._service = service
        self._on_ready = on_ready
        self._node = node  # empty: the controller takes the caller's certificate
        self._answers: dict[bytes, EapUser | None] = {}
        self._tasks: dict[bytes, asyncio.Task[None]] = {}

    def lookup(self, identity: bytes) -> EapUser | UserPending | None:
        if identity in self._answers:
            return self._answers.pop(identity)
        if identity not in self._tasks and len(identity) <= MAX_IDENTITY:
            task = asyncio.get_running_loop().create_task(self._fetch(identity), name="eap-credential")
            self._tasks[identity] = task
        return PENDING

    async def _fetch(self, identity: bytes) -> None:
        name = identity.decode("utf-8", "replace")
        user: EapUser | None = None
        try:
            request = agent_pb2.GetEapCredentialRequest(node=self._node, identity=name)
            answer = await self._service.GetEapCredential(request, timeout=RPC_TIMEOUT)
            if answer.method == "eap-tls":
                user = EapUser(identity, tls=True)
            elif answer.method == "eap-mschapv2" and len(answer.nt_hash) == 16:
                user = EapUser(identity, nt_hash=Secret(answer.nt_hash))
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                log.warning("remote access: EAP credential of %r: controller: %s", name, exc.details())
        finally:
            self._tasks.pop(identity, None)
        self._answers[identity] = user
        self._on_ready(identity)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
