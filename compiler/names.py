"""Naming: generated object names, Envoy route names, host names. Pure functions, unit-tested.

Generated names are derived from source names only (never from order or time), are valid RFC 1123
labels, and are capped at 63 characters: a longer name keeps a readable prefix and ends in a short
hash of the full name, so two long names never collide by truncation.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MAX_NAME = 63
PREFIX = "llmc"
ROUTING_HEADER = "x-llmc-provider"  # internal: set by the Lua filter, matched by pinned VS routes


@dataclass(frozen=True)
class BodyField:
    """A top-level string field of the JSON request body that rules may match on (llmc extension;
    ``matches[].<name>`` in compiler/api.py). The filter reads it and sets ``header`` before Envoy
    selects the route; the VirtualService matches that header."""

    name: str
    header: str  # internal: set by the Lua filter, matched by the rules' VirtualService routes
    limit: int  # longest value the filter exposes for routing (longer ones match no condition)
    example: str  # a value for hints


#: The body fields rules may match on: one entry (and the field on ``matches[]``) adds one.
BODY_FIELDS = {f.name: f for f in (
    BodyField("model", "x-llmc-model", 256, "gpt-4o"),
)}
#: internal, failover rules only: the weighted clusters' random value ("0": tries in list order)
ORDER_HEADER = "x-llmc-order"
RESERVED_HEADER_PREFIX = "x-llmc-"
#: an HTTP header name (RFC 9110 token)
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-zA-Z-]+$")
#: internal response header: the route of a translated provider adds it to every answer, so the
#: filter's response path learns with one header read (not a dynamic-metadata read, which costs ~10%
#: of a small request's CPU) that it must translate; the filter removes it
TRANSLATE_HEADER = "x-llmc-translate"
#: internal response header, likewise: the pinned routes of failover rules add it (also to the
#: router's own replies when every try failed), so only their responses read dynamic metadata
FAILOVER_HEADER = "x-llmc-failover"
#: internal response header of failover rules: the upstream filter names the provider that answered
ANSWERED_BY_HEADER = "x-llmc-answered-by"
#: Every internal header. Every route removes them all from the request before it goes upstream,
#: whoever set them (the filter, or a client): none ever reaches a provider.
INTERNAL_HEADERS = (ROUTING_HEADER, *(f.header for f in BODY_FIELDS.values()), ORDER_HEADER, TRANSLATE_HEADER,
                    FAILOVER_HEADER, ANSWERED_BY_HEADER)
#: DestinationRule subset of a provider's k-th key slot on failover rules (k >= 2; the first slot
#: is the provider's own cluster): a distinct Envoy cluster per key, so a retry that zeroes the
#: clusters already tried can still reach the same provider with its next key (docs/failover.md)
KEY_SUBSET_PREFIX = "llmc-key-"


def key_subset(slot: int) -> str | None:
    """The subset of key slot ``slot`` (1-based): None for the first (the plain cluster)."""
    return None if slot == 1 else f"{KEY_SUBSET_PREFIX}{slot}"


ROUTE_SEPARATOR = "/"  # appears in no Kubernetes name, rule name or provider name
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RULE_NAME = re.compile(r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def cap(name: str, limit: int = MAX_NAME) -> str:
    """Cap ``name`` at ``limit`` characters, keeping it unique with a hash suffix."""
    if len(name) <= limit:
        return name
    head = name[: limit - 9].rstrip("-.")
    return f"{head}-{short_hash(name)}"


def to_label(text: str) -> str:
    """Lower-case RFC 1123 label from arbitrary text (dots and other characters become '-')."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label or "x"


def object_name(kind_prefix: str, name: str) -> str:
    """Name of a generated object, e.g. ``llmc-provider-dashscope-qwen``."""
    full = f"{PREFIX}-{kind_prefix}-{to_label(name)}"
    if to_label(name) != name:
        # Names that needed rewriting get a hash so that "a.b" and "a-b" do not collide.
        full = f"{full}-{short_hash(name, 6)}"
    return cap(full)


def _labelled(base: str, raw: str) -> str:
    """``<base>-<raw as a label>``; a hash of ``raw`` keeps rewritten values apart ("a.b" vs "a-b")."""
    label = to_label(raw)
    full = f"{base}-{label}"
    if label != raw:
        full = f"{full}-{short_hash(raw, 6)}"
    return cap(full)


def selector_name(base: str, selector: tuple[tuple[str, str], ...]) -> str:
    """Name of an object generated per workload selector, e.g. ``llmc-telemetry-ratings``."""
    if not selector:
        return cap(base)
    return _labelled(base, "-".join(v for _, v in selector))


def volume_name(secret: str) -> str:
    """Pod volume (a DNS-1123 label) that mounts Secret ``secret`` for the proxy."""
    return _labelled(PREFIX, secret)


def is_label(name: str) -> bool:
    return len(name) <= MAX_NAME and bool(_LABEL.fullmatch(name))


def route_name(namespace: str, label: str, rule: str | None = None, provider: str | None = None) -> str:
    """Envoy route name (VirtualService ``http[].name``, ``%ROUTE_NAME%`` in access logs).

    ``llmc/<namespace>/<route>/<rule>`` for a rule, ``…/<rule>/<provider>`` for the pinned route of
    a weighted rule's provider, ``llmc/<namespace>/<route>`` for a route that only forwards. No
    component can contain ``/`` (Kubernetes names, rule names and provider names exclude it), so
    two different (route, rule, provider) triples never share a name.
    """
    parts = [PREFIX, namespace, label] + [p for p in (rule, provider) if p is not None]
    assert not any(ROUTE_SEPARATOR in p for p in parts), parts
    return ROUTE_SEPARATOR.join(parts)


def pin_list_regex(pin: str) -> str:
    """RE2 pattern matching a space-separated list of pinned route names that contains ``pin`` (the
    filter sets the routing header to `` <pin> <pin> … `` on hosts that route by model)."""
    return ".* " + "".join(c if c.isalnum() or c == "_" else "\\" + c for c in pin) + " .*"


def special_route(namespace: str, label: str, what: str) -> str:
    """A route of llmc's own (``*models``: the model list; ``*nomatch``: no rule matched): rule names
    start with a letter or digit, so ``*`` keeps these apart from every rule's route."""
    return route_name(namespace, label, f"*{what}")


def rule_routes(namespace: str, label: str, rule: str, pinned: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
    """(the rule's route name, {provider: pinned route name}) for the providers in ``pinned``."""
    return (route_name(namespace, label, rule),
            {p: route_name(namespace, label, rule, p) for p in pinned})


def fqdn(host: str, namespace: str, domain: str) -> str:
    """The name istiod gives ``host`` as written in a VirtualService of ``namespace``.

    Short names (no dot) are Kubernetes Services of the VirtualService's namespace; names with dots
    are taken as fully qualified, as Istio does.
    """
    if "." in host:
        return host
    return f"{host}.{namespace}.svc.{domain}"


def vhost_name(host_fqdn: str, port: int) -> str:
    """istiod's virtual host name (``net.JoinHostPort``)."""
    return f"{host_fqdn}:{port}"
