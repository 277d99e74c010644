"""Discovery, OpenAPI v3 and ``Table`` responses of the fake API server, so the real ``kubectl``
can ``apply --server-side`` and ``get`` against it.

* ``/version``; legacy discovery ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>/<version>`` (the
  aggregated v2 form is not offered: kubectl falls back to these, as it does with older servers);
* resources: the built-ins a controller test needs (namespaces, secrets, leases,
  customresourcedefinitions) and every CRD stored in the server (``kubectl apply -f`` a CRD and its
  kind is discoverable, with short names and categories);
* ``/openapi/v3`` and one document per CRD group-version (its schemas with
  ``x-kubernetes-group-version-kind``, its paths with the ``fieldValidation`` parameter, which makes
  kubectl leave validation to the server); no OpenAPI v2 (that is protobuf on a real server);
* ``Table`` (``meta.k8s.io/v1``) for lists and gets that ask for it: a Name column plus the CRD's
  ``additionalPrinterColumns``, evaluated for the JSONPath forms CRDs use (``.a.b``, ``.a[0]``,
  ``.a[?(@.k=="v")].b``).
"""

from __future__ import annotations

import json
import re
from typing import Any

BUILTIN = {  # (group, version) → [(plural, kind, namespaced, short names)]
    ("", "v1"): [("namespaces", "Namespace", False, ["ns"]), ("secrets", "Secret", True, [])],
    ("coordination.k8s.io", "v1"): [("leases", "Lease", True, [])],
    ("apiextensions.k8s.io", "v1"): [("customresourcedefinitions", "CustomResourceDefinition", False, ["crd"])],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def crds(objects: dict) -> list[dict]:
    return [o for k, o in sorted(objects.items()) if k[:2] == ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions")]


def _resources(objects: dict) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for (group, version), items in BUILTIN.items():
        for plural, kind, namespaced, short in items:
            out.setdefault((group, version), []).append(
                {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                 "verbs": VERBS, "shortNames": short})
    for crd in crds(objects):
        spec = spec_names = crd["spec"]
        spec_names = spec["names"]
        for v in spec["versions"]:
            if not v.get("served"):
                continue
            res = out.setdefault((spec["group"], v["name"]), [])
            res.append({"name": spec_names["plural"], "singularName": spec_names.get("singular", ""),
                        "namespaced": spec["scope"] == "Namespaced", "kind": spec_names["kind"], "verbs": VERBS,
                        "shortNames": spec_names.get("shortNames", []),
                        "categories": spec_names.get("categories", [])})
            if "status" in (v.get("subresources") or {}):
                res.append({"name": f"{spec_names['plural']}/status", "singularName": "", "kind": spec_names["kind"],
                            "namespaced": spec["scope"] == "Namespaced", "verbs": ["get", "patch", "update"]})
    return out


def discovery(objects: dict, path: str) -> dict | None:
    """The response body for a discovery or OpenAPI path, or None if ``path`` is not one."""
    parts = [p for p in path.split("/") if p]
    if parts == ["version"]:
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-llmc-fake", "platform": "linux/amd64"}
    resources = _resources(objects)
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if parts == ["apis"]:
        groups: dict[str, list[str]] = {}
        for group, version in sorted(resources):
            if group:
                groups.setdefault(group, []).append(version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[-1]}", "version": vs[-1]}} for g, vs in groups.items()]}
    if parts == ["api", "v1"] or len(parts) == 3 and parts[0] == "apis":
        gv = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
        if gv not in resources:
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "/".join(p for p in gv if p), "resources": resources[gv]}
    if parts[:2] == ["openapi", "v3"]:
        return _openapi(objects, parts[2:])
    return None


def _openapi(objects: dict, rest: list[str]) -> dict | None:
    docs: dict[str, dict] = {}

    def add(group: str, version: str, kind: str, plural: str, namespaced: bool, schema: dict) -> None:
        gv = f"apis/{group}/{version}" if group else f"api/{version}"
        doc = docs.setdefault(gv, {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
                                   "paths": {}, "components": {"schemas": {}}})
        gvk = {"group": group, "version": version, "kind": kind}
        schema = json.loads(json.dumps(schema))
        schema["x-kubernetes-group-version-kind"] = [gvk]
        name = ".".join(reversed(group.split("."))) + f".{version}.{kind}" if group else f"io.k8s.api.core.{version}.{kind}"
        doc["components"]["schemas"][name] = schema
        params = [{"name": p, "in": "query", "schema": {"type": "string"}}
                  for p in ("dryRun", "fieldManager", "fieldValidation", "force")]
        scope = "namespaces/{namespace}/" if namespaced else ""
        doc["paths"][f"/{gv}/{scope}{plural}/{{name}}"] = {"patch": {
            "parameters": params, "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch"}}

    for (group, version), items in BUILTIN.items():
        for plural, kind, namespaced, _ in items:
            add(group, version, kind, plural, namespaced, {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    for crd in crds(objects):
        spec = crd["spec"]
        for v in spec["versions"]:
            add(spec["group"], v["name"], spec["names"]["kind"], spec["names"]["plural"], spec["scope"] == "Namespaced",
                (v.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"})
    if not rest:
        return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in sorted(docs)}}
    return docs.get("/".join(rest))


_STEP = re.compile(r'\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_]+)==["\']([^"\']*)["\']\)\]')


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Values selected by a CRD printer-column JSONPath (the forms above; others select nothing)."""
    values, pos = [obj], 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            return []
        pos = m.end()
        field, index, key, want = m.groups()
        out = []
        for v in values:
            if field is not None and isinstance(v, dict) and field in v:
                out.append(v[field])
            elif index is not None and isinstance(v, list) and int(index) < len(v):
                out.append(v[int(index)])
            elif key is not None and isinstance(v, list):
                out += [i for i in v if isinstance(i, dict) and str(i.get(key)) == want]
        values = out
    return values


def _age(stamp: str) -> str:
    import datetime as dt

    try:
        then = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return stamp
    secs = max(0, int((dt.datetime.now(dt.UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def table(objects: dict, group: str, plural: str, items: list[dict], wide: bool = False) -> dict:
    """A meta.k8s.io/v1 Table of ``items`` with the CRD's printer columns (Name and Age otherwise)."""
    columns = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    for crd in crds(objects):
        if crd["spec"]["group"] == group and crd["spec"]["names"]["plural"] == plural:
            version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
            columns = version.get("additionalPrinterColumns") or columns
    defs = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    defs += [{"name": c["name"], "type": c["type"], "format": c.get("format", ""), "description": c.get("description", ""),
              "priority": c.get("priority", 0)} for c in columns]
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for c in columns:
            found = jsonpath(obj, c["jsonPath"])
            value = found[0] if len(found) == 1 else (json.dumps(found) if found else None)
            if c["type"] == "date" and isinstance(value, str):
                value = _age(value)  # the API server renders dates as ages, as kubectl shows them
            cells.append(value if not isinstance(value, (dict, list)) else json.dumps(value))
        meta = {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in obj["metadata"]}
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": meta}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": defs, "rows": rows}
