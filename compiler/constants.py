"""The API constants of llmc, in one place: every module (compiler, GitOps, controller) reads them
here, and the Lua filter gets the ones it needs through its filter context (or a test asserts its
own copies equal these).

* the source API (group, version, kinds, plurals, short names);
* the marks on every generated object (the managed-by label, the sources annotation);
* the registry of generated kinds: group, version, plural, templates and translators, emit order and
  RBAC verbs, read by the pipeline (output order), the translators (``compiler/translate/__init__.py``
  imports them from here), the controller (the resources it applies, lists, watches and prunes, and
  its RBAC) and ``llmc explain``;
* the name of the Lua filter in Envoy (``FILTER_NAME``), read by the translators and ``llmc explain``.
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

#: the HTTP filter's name in Envoy: the key of its per-route config and route metadata
FILTER_NAME = "llmc.lua"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "llmc"
MANAGED_BY = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
SOURCES_ANNOTATION = "llmc.io/sources"


#: RBAC verbs on a generated kind: always read (the controller lists and watches every generated kind,
#: so a leftover object of a flag turned off is still seen); written (server-side apply is a PATCH that
#: needs ``create`` to create, pruning a DELETE) only when the kind can be generated
READ_VERBS = ("list", "watch")
WRITE_VERBS = ("create", "patch", "delete")


@dataclass(frozen=True)
class GeneratedKind:
    """One kind llmc generates: its API coordinates, how it is made and what the controller needs."""

    kind: str
    group: str
    version: str
    plural: str
    #: (template under ``templates/``, translator ``module:function`` of ``compiler.translate``), in the
    #: order they run; ``compiler/translate/__init__.py`` imports the translators from here
    outputs: tuple[tuple[str, str], ...]
    #: the option (CLI spelling) without which llmc never generates the kind: the controller needs
    #: create/patch/delete on it only then (``compiler/controller/rbac.py``); None: always possible
    flag: str | None = None
    #: a kind of Kubernetes' core group (served at ``/api/v1``): the name in ``CoreV1Api``'s methods
    #: (``<verb>_namespaced_<name>``) the controller calls for it (the custom-objects client cannot)
    core_name: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version  # the core group: "v1"

    def verbs(self, flags: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """The controller's RBAC verbs on this kind when it runs with ``flags`` (CLI spellings)."""
        return READ_VERBS + (WRITE_VERBS if self.flag is None or self.flag in flags else ())


#: Everything llmc generates, in emit order: the pipeline, the translators, the controller (apply,
#: list, watch, prune), its RBAC (deploy/rbac.yaml, checked by tests/test_deploy.py) and
#: ``llmc explain`` read this table.
GENERATED_KINDS = (
    GeneratedKind("ServiceEntry", "networking.istio.io", "v1", "serviceentries",
                  (("serviceentry.json.j2", "serviceentry:translate_serviceentries"),)),
    GeneratedKind("DestinationRule", "networking.istio.io", "v1", "destinationrules",
                  (("destinationrule.json.j2", "destinationrule:translate_destinationrules"),)),
    GeneratedKind("Gateway", "networking.istio.io", "v1", "gateways",
                  (("gateway.json.j2", "gateway:translate_gateways"),), flag="egress-gateway"),
    GeneratedKind("VirtualService", "networking.istio.io", "v1", "virtualservices",
                  (("virtualservice.json.j2", "virtualservice:translate_virtualservices"),)),
    GeneratedKind("EnvoyFilter", "networking.istio.io", "v1alpha3", "envoyfilters",
                  (("envoyfilter.json.j2", "envoyfilter:translate_envoyfilters"),
                   ("tokenmetrics.json.j2", "telemetry:translate_token_metrics"))),
    GeneratedKind("Telemetry", "telemetry.istio.io", "v1", "telemetries",
                  (("telemetry.json.j2", "telemetry:translate_telemetries"),), flag="telemetry"),
    GeneratedKind("TrafficExtension", "extensions.istio.io", "v1alpha1", "trafficextensions",
                  (("trafficextension.json.j2", "trafficextension:translate_trafficextensions"),), flag="target"),
)
#: Generated for a component other than Istio, emitted after the Istio kinds, in that component's
#: namespace (token limits' envoyproxy/ratelimit configuration: the rate-limit service's namespace).
#: The controller lists, watches and writes these in that namespace only (never the cluster's
#: ConfigMaps): its RBAC for them is a Role there (``compiler/controller/rbac.py``,
#: ``deploy/components/rate-limit-service``).
SERVICE_CONFIG_KINDS = (GeneratedKind("ConfigMap", "", "v1", "configmaps",
                                      (("configmap.json.j2", "ratelimit:translate_ratelimit_config"),),
                                      flag="rate-limit-service", core_name="config_map"),)
GENERATED = {k.kind: k for k in GENERATED_KINDS + SERVICE_CONFIG_KINDS}
KIND_ORDER = {k.kind: i for i, k in enumerate(GENERATED_KINDS + SERVICE_CONFIG_KINDS)}
#: the kinds other modules compare objects with (``llmc explain``, ``llmc diff``)
SERVICE_ENTRY, DESTINATION_RULE, GATEWAY, VIRTUAL_SERVICE, ENVOY_FILTER, TELEMETRY, TRAFFIC_EXTENSION = (
    k.kind for k in GENERATED_KINDS)
(CONFIG_MAP,) = (k.kind for k in SERVICE_CONFIG_KINDS)


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
