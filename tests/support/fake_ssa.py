"""Server-side apply for the fake API server: field ownership per manager, ``managedFields``,
conflicts, and what an apply removes.

A field set is the set of leaf paths of an object: maps are walked, lists are atomic leaves (what
a CRD's lists without ``x-kubernetes-list-type`` are on a real server — Istio's and llmc's are), and
under ``metadata`` only ``labels``, ``annotations`` and ``ownerReferences`` are owned. An apply by
manager M with configuration C:

* conflicts (409) when C sets a field another manager owns to a different value, unless forced;
* removes the fields M owned before and C no longer sets, unless another manager owns them too;
* sets C's fields; M then owns exactly C's fields; another manager keeps a field it owned only while
  the value is unchanged (shared ownership), and loses it when the value changed (forced).

Non-apply writes (create, update, merge patch) give their manager the leaf fields they changed.
``status`` is never part of a main-resource write when the status subresource is on (the caller
strips it). Not modelled: list-map/set merging by key, ``metadata.finalizers``, ownership of
individual list items, and the ``Apply`` vs ``Update`` subtleties of managers using both.
"""

from __future__ import annotations

import datetime as dt
from copy import deepcopy
from typing import Any

Path = tuple[str, ...]
_META_OWNED = ("labels", "annotations", "ownerReferences")


def leaves(obj: dict) -> dict[Path, Any]:
    out: dict[Path, Any] = {}

    def walk(node: Any, path: Path) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, path + (k,))
        else:
            out[path] = node

    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata":
            for mk in _META_OWNED:
                if mk in (value or {}):
                    walk(value[mk], ("metadata", mk))
            continue
        walk(value, (key,))
    return out


def _get(obj: Any, path: Path) -> Any:
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return _MISSING
        obj = obj[p]
    return obj


_MISSING = object()


def _set(obj: dict, path: Path, value: Any) -> None:
    for p in path[:-1]:
        if not isinstance(obj.get(p), dict):
            obj[p] = {}
        obj = obj[p]
    obj[path[-1]] = deepcopy(value)


def _delete(obj: dict, path: Path) -> None:
    parents = []
    for p in path[:-1]:
        if not isinstance(obj.get(p), dict):
            return
        parents.append((obj, p))
        obj = obj[p]
    obj.pop(path[-1], None)
    for parent, key in reversed(parents):  # drop maps the removal emptied
        if parent[key] == {}:
            del parent[key]
        else:
            break


def owned(obj: dict) -> dict[str, set[Path]]:
    """manager → paths, from ``metadata.managedFields``."""
    out: dict[str, set[Path]] = {}
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        paths: set[Path] = set()

        def walk(node: dict, path: Path, paths: set[Path] = paths) -> None:
            for k, v in node.items():
                if k == ".":
                    continue
                sub = path + (k[2:],)
                if v:
                    walk(v, sub)
                else:
                    paths.add(sub)

        walk(entry.get("fieldsV1") or {}, ())
        out.setdefault(entry["manager"], set()).update(paths)
    return out


def _fields_v1(paths: set[Path]) -> dict:
    root: dict = {}
    for path in sorted(paths):
        node = root
        for p in path:
            node = node.setdefault(f"f:{p}", {})
    return root


def _record(obj: dict, ownership: dict[str, set[Path]], operations: dict[str, str]) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj.setdefault("metadata", {})["managedFields"] = [
        {"manager": m, "operation": operations.get(m, "Update"), "apiVersion": obj.get("apiVersion", ""),
         "time": now, "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(paths)}
        for m, paths in sorted(ownership.items()) if paths]


def apply(current: dict | None, config: dict, manager: str, force: bool) -> tuple[dict | None, list[str]]:
    """(the new object, []) or (None, conflicting paths)."""
    base = deepcopy(current) if current is not None else {"apiVersion": config.get("apiVersion"),
                                                          "kind": config.get("kind"), "metadata": {}}
    ownership = owned(base)
    mine_before = ownership.pop(manager, set())
    wanted = leaves(config)
    conflicts = [".".join(p) for p, v in wanted.items() for m, paths in ownership.items()
                 if p in paths and _get(base, p) != v]
    if conflicts and not force:
        return None, sorted(set(conflicts))
    for path in mine_before - set(wanted):
        if not any(path in paths for paths in ownership.values()):
            _delete(base, path)
    for path, value in wanted.items():
        changed = _get(base, path) != value
        _set(base, path, value)
        if changed:
            for paths in ownership.values():
                paths.discard(path)
    for key in ("name", "namespace"):
        if key in (config.get("metadata") or {}):
            base["metadata"][key] = config["metadata"][key]
    ownership[manager] = set(wanted)
    operations = {m: e.get("operation", "Update") for e in (base["metadata"].get("managedFields") or [])
                  for m in [e["manager"]]}
    operations[manager] = "Apply"
    _record(base, ownership, operations)
    return base, []


def update(current: dict | None, new: dict, manager: str) -> dict:
    """A non-apply write: ``manager`` owns the leaf fields that changed."""
    ownership = owned(current) if current is not None else {}
    operations = {e["manager"]: e.get("operation", "Update")
                  for e in ((current or {}).get("metadata") or {}).get("managedFields") or []}
    before = leaves(current) if current is not None else {}
    after = leaves(new)
    changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
    gone = set(before) - set(after)
    for paths in ownership.values():
        paths -= changed | gone
    ownership.setdefault(manager, set()).update(changed)
    operations.setdefault(manager, "Update")
    new = deepcopy(new)
    _record(new, ownership, operations)
    return new
