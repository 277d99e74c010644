"""An OTLP/gRPC logs receiver (``opentelemetry.proto.collector.logs.v1.LogsService``) on loopback:
what an OpenTelemetry collector receives from Envoy's OpenTelemetry access logger."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


def _value(v: common_pb2.AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _field(message, number: int):
    """A repeated field by its number. xds-protos (the rate-limit double's dependency) ships an old
    copy of the OpenTelemetry protos into the same ``opentelemetry/proto`` package, and whichever
    of the two wheels pip installs last wins: there ``ResourceLogs.scope_logs`` is
    ``instrumentation_library_logs`` and ``ScopeLogs.log_records`` is ``logs``, with the same
    numbers (2 and 2) and the same wire format. Reading by number works with either copy."""
    return getattr(message, message.DESCRIPTOR.fields_by_number[number].name)


class Receiver(logs_service_pb2_grpc.LogsServiceServicer):
    """Keeps every log record as (body, attributes as a dict)."""

    def __init__(self) -> None:
        self.records: list[tuple[object, dict]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        with self._lock:
            for resource_logs in request.resource_logs:
                for scope_logs in _field(resource_logs, 2):  # scope_logs
                    for record in _field(scope_logs, 2):  # log_records
                        attrs = {kv.key: _value(kv.value) for kv in record.attributes}
                        self.records.append((_value(record.body), attrs))
        return logs_service_pb2.ExportLogsServiceResponse()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[object, dict]]:
        """The first ``count`` records, once that many arrived (Envoy batches and flushes them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.records) >= count:
                    return list(self.records[:count])
            time.sleep(0.05)
        raise AssertionError(f"{len(self.records)} OTLP log records arrived, expected {count}")

    def wait_for_attribute(self, key: str, part: str, timeout: float = 20.0) -> dict:
        """The attributes of the first record whose attribute ``key`` contains ``part``, once it arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next((a for _, a in self.records if part in str(a.get(key) or "")), None)
            if found is not None:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no OTLP log record with {part!r} in {key!r} among {len(self.records)}")

    def stop(self) -> None:
        self._server.stop(0)
