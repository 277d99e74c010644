"""The API constants of llmc, in one place: every module (compiler, GitOps, controller) reads them
here, and the Lua filter gets the ones it needs through its filter context (or a test asserts its
own copies equal these).

* the source API (group, version, kinds, plurals, short names);
* the marks on every generated object (the managed-by label, the sources annotation);
* the registry of generated kinds: group, version, plural and emit order, read by the pipeline (output
  order), the translators (``compiler/translate/__init__.py`` maps each kind to its templates) and the
  controller (the resources it applies, lists, watches and prunes).
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "istio.alibabacloud.com"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
SERVED_VERSIONS = (VERSION,)


@dataclass(frozen=True)
class SourceKind:
    kind: str
    plural: str
    short_names: tuple[str, ...]


SOURCE_KINDS = (SourceKind("LLMProvider", "llmproviders", ("llmp",)), SourceKind("LLMRoute", "llmroutes", ("llmr",)))
KINDS = tuple(k.kind for k in SOURCE_KINDS)
PLURALS = {k.kind: k.plural for k in SOURCE_KINDS}

#: Istio's root namespace (meshConfig.rootNamespace, default istio-system): config there applies to
#: every namespace, so LLMProviders there are exported to every namespace by default (ASM's guides
#: put shared providers there).
ROOT_NAMESPACE = "istio-system"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "llmc"
MANAGED_BY = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
SOURCES_ANNOTATION = "llmc.io/sources"


@dataclass(frozen=True)
class GeneratedKind:
    kind: str
    group: str
    version: str
    plural: str
    #: the option (CLI spelling) without which llmc never generates the kind: the controller needs
    #: create/patch/delete on it only then (``compiler/controller/rbac.py``); None: always possible
    flag: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


#: Everything llmc generates, in emit order.
GENERATED_KINDS = (
    GeneratedKind("ServiceEntry", "networking.istio.io", "v1", "serviceentries"),
    GeneratedKind("DestinationRule", "networking.istio.io", "v1", "destinationrules"),
    GeneratedKind("Gateway", "networking.istio.io", "v1", "gateways", flag="egress-gateway"),
    GeneratedKind("VirtualService", "networking.istio.io", "v1", "virtualservices"),
    GeneratedKind("EnvoyFilter", "networking.istio.io", "v1alpha3", "envoyfilters"),
    GeneratedKind("Telemetry", "telemetry.istio.io", "v1", "telemetries", flag="telemetry"),
)
#: Generated for a component other than Istio, emitted after the Istio kinds; the controller neither
#: applies nor watches these (it has no --rate-limit-service yet, and must not list every ConfigMap of
#: the cluster): token limits' envoyproxy/ratelimit configuration, in the rate-limit service's namespace.
SERVICE_CONFIG_KINDS = (GeneratedKind("ConfigMap", "", "v1", "configmaps", flag="rate-limit-service"),)
GENERATED = {k.kind: k for k in GENERATED_KINDS + SERVICE_CONFIG_KINDS}
KIND_ORDER = {k.kind: i for i, k in enumerate(GENERATED_KINDS + SERVICE_CONFIG_KINDS)}


def is_generated(obj: object) -> bool:
    """True for an object llmc generated: its managed-by label *and* its sources annotation."""
    if not isinstance(obj, dict):
        return False
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return False
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    return (isinstance(labels, dict) and labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
            and isinstance(annotations, dict) and SOURCES_ANNOTATION in annotations)
