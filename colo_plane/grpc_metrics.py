"""A grpc.aio server interceptor that keeps the standard gRPC server
metrics (grpc_server_started_total, grpc_server_handled_total,
grpc_server_handling_seconds), aborted calls included."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from colo_plane import metrics


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "unknown", method)
    return service, name


def _code_of(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is None:
        return grpc.StatusCode.OK.name
    return grpc.StatusCode.UNKNOWN.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split(handler_call_details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, "unary", service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            # One answer at the end, like a unary call: counted and timed the same way.
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, "client_stream", service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # bidi streams: none in colo.v1

    @staticmethod
    def _unary(behavior: Any, grpc_type: str, service: str, method: str) -> Any:
        labels = (grpc_type, service, method)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metrics.GRPC_STARTED.labels(*labels).inc()
            start = time.perf_counter()
            exc: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                metrics.GRPC_HANDLING.labels(*labels).observe(time.perf_counter() - start)
                metrics.GRPC_HANDLED.labels(*labels, _code_of(context, exc)).inc()

        return wrapper

    @staticmethod
    def _server_stream(behavior: Any, service: str, method: str) -> Any:
        labels = ("server_stream", service, method)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            metrics.GRPC_STARTED.labels(*labels).inc()
            start = time.perf_counter()
            exc: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                exc = e
                raise
            finally:
                metrics.GRPC_HANDLING.labels(*labels).observe(time.perf_counter() - start)
                metrics.GRPC_HANDLED.labels(*labels, _code_of(context, exc)).inc()

        return wrapper
