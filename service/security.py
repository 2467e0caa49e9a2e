"""Transport security shared by the service and the trainer: a bearer-token server interceptor,
TLS credential builders and the metadata a client sends.

The service guards RepositoryModelLoad/Unload with `bearer_token_interceptor` when a token is
configured; the trainer guards its control API the same way and presents `auth_metadata` to the
service. Tokens are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

import grpc

_PREFIX = "bearer "


def auth_metadata(token: str) -> list[tuple[str, str]]:
    """The call metadata that authenticates a client holding `token`."""
    return [("authorization", f"Bearer {token}")]


def _presented_token(metadata: Collection[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if text[: len(_PREFIX)].lower() == _PREFIX:
                return text[len(_PREFIX):].strip()
            return None
    return None


class _BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls to the protected methods that lack `authorization: Bearer <token>`."""

    def __init__(self, token: str, protected_methods: Collection[str]) -> None:
        if not token:
            raise ValueError("bearer token must not be empty")
        self._token = token.encode()
        self._protected = frozenset(protected_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method not in self._protected:
            return await continuation(handler_call_details)
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented is None:
            message = f"{method} requires 'authorization: Bearer <token>' metadata"
        elif not hmac.compare_digest(presented.encode(), self._token):
            message = f"{method}: invalid bearer token"
        else:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        return _rejecting_handler(handler, message)


def _rejecting_handler(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same arity as `handler` that aborts with UNAUTHENTICATED."""
    if handler is None:  # unknown method: let grpc answer UNIMPLEMENTED as usual
        return None  # type: ignore[return-value]

    async def abort_unary(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request_iterator, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_stream, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_unary, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort_unary, **kwargs)


def bearer_token_interceptor(token: str, protected_methods: Collection[str]) -> grpc.aio.ServerInterceptor:
    """A grpc.aio server interceptor that answers UNAUTHENTICATED on `protected_methods` (full
    method names, e.g. "/inference.GRPCInferenceService/RepositoryModelLoad") unless the call
    carries `authorization: Bearer <token>`."""
    return _BearerTokenInterceptor(token, protected_methods)


def server_credentials(cert_file: str | Path, key_file: str | Path) -> grpc.ServerCredentials:
    """TLS server credentials from a PEM certificate chain and private key."""
    cert = Path(cert_file).read_bytes()
    key = Path(key_file).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


def channel_credentials(ca_file: str | Path | None) -> grpc.ChannelCredentials:
    """TLS channel credentials trusting the PEM CA bundle `ca_file` (system roots when None)."""
    root = Path(ca_file).read_bytes() if ca_file is not None else None
    return grpc.ssl_channel_credentials(root_certificates=root)
