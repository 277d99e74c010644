"""Helpers for driving `llmc controller` against the fake API server (shared by the controller tests)."""

from __future__ import annotations

import json
import time

from kubernetes import client
from ruamel.yaml import YAML

from compiler import Options
from compiler.controller.leader import LeaseConfig
from compiler.controller.reconcile import HASH_ANNOTATION, OWNER_LABEL
from compiler.controller.runtime import Controller, Tuning
from tests.conftest import REPO
from tests.support.fake_apiserver import FakeAPIServer

SRC = "apis/istio.alibabacloud.com/v1beta1"
NET = "apis/networking.istio.io/v1"
EF = "apis/networking.istio.io/v1alpha3"
EXT = "apis/extensions.istio.io/v1alpha1"
PLURAL = {"LLMProvider": "llmproviders", "LLMRoute": "llmroutes"}
GEN = {"ServiceEntry": (NET, "serviceentries"), "DestinationRule": (NET, "destinationrules"),
       "VirtualService": (NET, "virtualservices"), "EnvoyFilter": (EF, "envoyfilters"),
       "TrafficExtension": (EXT, "trafficextensions")}


def seed_objects() -> list[dict]:
    docs = []
    for f in sorted((REPO / "samples" / "seed").glob("*.yaml")):
        for d in YAML(typ="safe").load_all(f.read_text()):
            d["metadata"].setdefault("namespace", "default")
            docs.append(d)
    return docs


def load_seed(server: FakeAPIServer) -> None:
    """`kubectl apply -f samples/seed/`."""
    for obj in seed_objects():
        server.put_object(SRC, PLURAL[obj["kind"]], obj)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    # Generous: the deadline only matters when the condition never comes; a loaded 2-core CI
    # machine running the whole suite can take seconds for one controller pass.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def settle(server: FakeAPIServer, prefix: str = "/apis/", quiet: float = 0.5, timeout: float = 30.0) -> int:
    """Wait until no write under ``prefix`` arrived for ``quiet`` seconds (the controller finished
    the passes in flight) and return the number of such writes so far: a count taken before the
    controller is idle would charge the first passes' late writes to the next change."""
    deadline = time.monotonic() + timeout
    count, since = len(server.writes(prefix)), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(server.writes(prefix))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return count
    raise AssertionError(f"writes under {prefix} did not settle")


FAST_LEASE = LeaseConfig(lease_duration=2.0, renew_deadline=1.5, retry_period=0.2, request_timeout=1.0)


def start(server: FakeAPIServer, identity: str = "a", **kw) -> Controller:
    cfg = client.Configuration()
    cfg.host = server.url
    tuning = Tuning(resync=kw.pop("resync", 60), watch_timeout=kw.pop("watch_timeout", 2), debounce=0.02,
                    backoff_base=0.05, backoff_cap=1.0, qps=0)
    ctrl = Controller(client.ApiClient(cfg), kw.pop("opts", Options()), identity,
                      kw.pop("lease_namespace", "llmc-system"),
                      lease=kw.pop("lease", FAST_LEASE), tuning=tuning, **kw)
    ctrl.start()
    return ctrl


def generated(server: FakeAPIServer) -> list[dict]:
    out = []
    for prefix, plural in GEN.values():
        out += server.list(prefix, plural)
    return out


def strip(obj: dict) -> dict:
    """An applied object as `llmc render` prints it: without server fields, owners and hash."""
    obj = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in obj["metadata"].items()
            if k not in ("resourceVersion", "uid", "generation", "creationTimestamp", "ownerReferences",
                         "managedFields")}
    meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != HASH_ANNOTATION}
    meta["labels"] = {k: v for k, v in meta["labels"].items() if k != OWNER_LABEL}
    return {**obj, "metadata": meta}


def conditions(server, kind, name, ns="default") -> dict:
    obj = server.get(SRC, PLURAL[kind], ns, name) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def programmed(server, kind, name, ns="default") -> bool:
    return conditions(server, kind, name, ns).get("Programmed", {}).get("status") == "True"




def kubeconfig(server: FakeAPIServer, path) -> str:
    """A kubeconfig file for the fake API server (plain http, a dummy token)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    return str(path)
