"""Undecodable requests answer INVALID_ARGUMENT, not grpc's UNKNOWN "Unexpected DecodeError".

grpc decodes the request with the generated `FromString` and reports its failure (a string field
that is not valid UTF-8, a truncated message) as an unexpected error in the handler. `add_servicer`
registers a service with a deserializer that keeps the failure and a handler that refuses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

_Servicer = TypeVar("_Servicer")


class _Undecodable:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return deserialize


async def _refuse(request: _Undecodable, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"undecodable request (string fields must be valid UTF-8): {request.reason}",
    )


def _unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        return await behaviour(request, context)

    return handle


def _stream(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        async for response in behaviour(request, context):
            yield response

    return handle


def _guarded(handler: Any) -> Any:
    if handler.request_streaming:
        return handler  # none of our services has client-streaming calls
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _stream(handler.unary_stream),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        _unary(handler.unary_unary),
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class _Registrations:
    """Stands in for the server while the generated `add_*_to_server` names its handlers."""

    def __init__(self) -> None:
        self.services: list[tuple[str, Mapping[str, Any]]] = []

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers also come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self.services.append((service, handlers))


def add_servicer(add: Callable[[_Servicer, Any], None], servicer: _Servicer, server: grpc.aio.Server) -> None:
    """`add(servicer, server)` (a generated `add_*Servicer_to_server`), refusing undecodable requests."""
    registrations = _Registrations()
    add(servicer, registrations)
    for service, handlers in registrations.services:
        guarded = {method: _guarded(handler) for method, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        register = getattr(server, "add_registered_method_handlers", None)  # grpcio >= 1.62, untyped
        if register is not None:
            register(service, guarded)
