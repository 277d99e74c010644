"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas never both write.

A replica holds the Lease while it renews it within ``lease_seconds``; others take it over only
after it expired. Every write goes through optimistic concurrency (``resourceVersion``): of two
replicas racing for an expired Lease, the API server lets exactly one win (409 for the other).
"""

from __future__ import annotations

import datetime as dt

from kubernetes import client
from kubernetes.client.rest import ApiException

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(value) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.strptime(value, FORMAT).replace(tzinfo=dt.UTC)


class LeaderElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, lease_seconds: int = 15):
        self.api = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity, self.lease_seconds = namespace, name, identity, lease_seconds

    def _body(self, resource_version: str | None = None) -> dict:
        meta = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                         "renewTime": _now().strftime(FORMAT)}}

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True while this replica holds the Lease."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return False
            try:
                self.api.create_namespaced_lease(self.namespace, self._body())
                return True
            except ApiException:
                return False
        spec = lease.spec
        renewed = _parse(spec.renew_time)
        duration = spec.lease_duration_seconds or self.lease_seconds
        held_by_other = spec.holder_identity not in (None, "", self.identity)
        if held_by_other and renewed is not None and (_now() - renewed).total_seconds() < duration:
            return False
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, self._body(lease.metadata.resource_version))
            return True
        except ApiException:
            return False

    def release(self) -> None:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.identity:
                body = self._body(lease.metadata.resource_version)
                body["spec"]["holderIdentity"] = ""
                self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException:
            pass
