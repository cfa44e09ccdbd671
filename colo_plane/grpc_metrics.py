"""A grpc.aio server interceptor that keeps the standard gRPC server
metrics (grpc_server_started_total, grpc_server_handled_total,
grpc_server_handling_seconds), aborted calls included.

A streaming-response handler comes in two shapes, and grpc.aio takes
both: an async generator that yields its answers (ours), or a coroutine
that writes them with context.write() and returns None (grpc.health.v1
Watch, reflection).  The wrapper is of the handler's own shape, so the
call runs exactly as it would unwrapped."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter

from colo_plane import metrics


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "unknown", method)
    return service, name


class _Handled:
    """grpc_server_handled_total of one method, its children by code looked up once."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._by_code: dict[str, Counter] = {}

    def inc(self, code: str) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = metrics.GRPC_HANDLED.labels(*self._labels, code)
        child.inc()


def _code_of(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is None:
        return grpc.StatusCode.OK.name
    return grpc.StatusCode.UNKNOWN.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self) -> None:
        # method -> (its handler, the wrapped one): built on a method's first call, not on every call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, handler_call_details.method)
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], full_method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, method = _split(full_method)
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
                self._streaming(handler.unary_stream, "server_stream", service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, "bidi_stream", service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    @staticmethod
    def _unary(behavior: Any, grpc_type: str, service: str, method: str) -> Any:
        labels = (grpc_type, service, method)
        started, handling = metrics.GRPC_STARTED.labels(*labels), metrics.GRPC_HANDLING.labels(*labels)
        handled = _Handled(labels)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started.inc()
            start = time.perf_counter()
            exc: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                handling.observe(time.perf_counter() - start)
                handled.inc(_code_of(context, exc))

        return wrapper

    @staticmethod
    def _streaming(behavior: Any, grpc_type: str, service: str, method: str) -> Any:
        if not inspect.isasyncgenfunction(behavior):
            # It writes its answers itself (context.write): a coroutine, counted like a unary call.
            return MetricsInterceptor._unary(behavior, grpc_type, service, method)
        labels = (grpc_type, service, method)
        started, handling = metrics.GRPC_STARTED.labels(*labels), metrics.GRPC_HANDLING.labels(*labels)
        handled = _Handled(labels)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started.inc()
            start = time.perf_counter()
            exc: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                exc = e
                raise
            finally:
                handling.observe(time.perf_counter() - start)
                handled.inc(_code_of(context, exc))

        return wrapper
