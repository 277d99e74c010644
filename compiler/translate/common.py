"""Metadata shared by every generated object."""

from __future__ import annotations

MANAGED_BY = {"app.kubernetes.io/managed-by": "llmc"}
SOURCES_ANNOTATION = "llmc.io/sources"


def metadata(name: str, namespace: str, sources: tuple[str, ...] | list[str]) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(MANAGED_BY),
        "annotations": {SOURCES_ANNOTATION: ", ".join(sorted(set(sources)))},
    }
