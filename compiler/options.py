"""Compiler options, validated in one place for every front end: the CLI (``llmc render`` and
friends, the controller's flags) and the function configs of ``llmc krm`` and the kustomize plugin.

The settings are one table: the fields of :class:`Options` declared with :func:`setting` (name, type,
default, help, function-config key, parser) make ``SETTINGS``, from which ``compiler/cli.py`` builds
the options of every compiling command and of ``llmc controller``, and ``compiler/gitops.py`` reads
the function configs of ``llmc krm`` and the kustomize plugin. A new setting is one field here.

:func:`parse_options` takes the options as text, the way every front end receives them, and returns
:class:`Options` or the list of problems (option name, message); each front end reports them in its
own way (a usage error, a KRM ``results`` entry).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_NAMESPACE = re.compile(_LABEL)
_EGRESS = re.compile(rf"{_LABEL}/{_LABEL}")
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


#: Istio minor versions llmc supports (docs/data-plane.md, "Supported Istio and Envoy versions"), oldest first
ISTIO_VERSIONS = ("1.28", "1.29", "1.30", "1.31")
#: targets that work with a known limit, said in a warning (LLMC011) on every compile for them
ISTIO_LIMITS = {
    "1.28": "Istio 1.28's proxy (Envoy 1.36) answers 413 to request bodies over 1 MiB whatever maxRequestBytes "
            "says: it applies the route's buffer limit only after the Lua filter has hit the listener's 1 MiB",
}
#: the default target: the newest supported
DEFAULT_ISTIO_VERSION = ISTIO_VERSIONS[-1]
#: the first Istio whose proxy (Envoy 1.39) has RetryPolicy.refresh_cluster_on_retry (failover)
FAILOVER_ISTIO_VERSION = "1.31"


def istio_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


T = TypeVar("T")
#: a setting's parser: the value as a front end received it (text, a list of texts for a repeatable
#: setting, a bool for a switch; None when not given) → (the value of Options, problem or None)
Parser = Callable[[Any], tuple[Any, "str | None"]]


@dataclass(frozen=True)
class Setting:
    """One compiler setting, as every front end spells it: ``--name`` on the CLI (``llmc render`` and
    the other compiling commands, ``llmc controller``), ``key`` in a function config (``llmc krm``, the
    kustomize plugin). Declared once, by :func:`setting` on a field of :class:`Options`."""

    field: str  # the attribute of Options
    name: str  # CLI spelling without the leading "--" (also the controller's flag)
    key: str  # function-config key
    help: str
    parse: Parser
    text_default: str | None = None  # the default as a user writes it (None: not set)
    switch: bool = False  # a flag without value on the CLI; "true"/"false" in a function config
    repeatable: bool = False  # CLI: repeat the option; function config: a list or comma-separated text
    short: str | None = None  # a one-letter CLI alias, e.g. "-n"
    metavar: str | None = None
    #: False: not a flag of ``llmc controller`` (which reads namespaced objects from the API server)
    controller: bool = True
    example: str = ""  # a valid value other than the default (a switch: "true"); tests/test_tables.py uses it
    #: the setting (its name) this one is meaningless without: given alone, it is a usage error
    needs: str | None = None

    @property
    def param(self) -> str:
        """The keyword of :func:`parse_options` and the CLI functions' parameter."""
        return self.name.replace("-", "_")


def setting(default: T, help: str, parse: Parser, *, example: str, name: str | None = None, key: str | None = None,
            text_default: str | None = None, switch: bool = False, repeatable: bool = False,
            short: str | None = None, metavar: str | None = None, controller: bool = True,
            needs: str | None = None) -> T:
    """A field of :class:`Options` that is a setting of every front end. ``name`` defaults to the
    field's name with dashes, ``key`` to its camelCase, ``text_default`` to ``default`` when that is
    a string."""
    spec = {"name": name, "key": key, "help": help, "parse": parse, "switch": switch, "repeatable": repeatable,
            "short": short, "metavar": metavar, "controller": controller, "example": example, "needs": needs,
            "text_default": text_default if text_default is not None or not isinstance(default, str) else default}
    return dataclasses.field(default=default, metadata={"setting": spec})  # type: ignore[return-value]


def _setting(f: dataclasses.Field) -> Setting:
    spec = dict(f.metadata["setting"])
    spec["name"] = spec["name"] or f.name.replace("_", "-")
    first, *rest = spec["name"].split("-")
    spec["key"] = spec["key"] or first + "".join(w.capitalize() for w in rest)  # camelCase
    return Setting(field=f.name, **spec)


# Parsers: what each front end receives → (value, problem) --------------------------------------

def _namespace(text: str) -> tuple[str, str | None]:
    return text, None if _NAMESPACE.fullmatch(text) else f"{text!r} is not a namespace name (a DNS-1123 label)"


def _domain(text: str) -> tuple[str, str | None]:
    return text, None if _DOMAIN.fullmatch(text) else f"{text!r} is not a DNS domain, e.g. cluster.local"


def _absolute(text: str) -> tuple[str, str | None]:
    return text, None if text.startswith("/") else f"{text!r} must be an absolute path in the proxy container"


def _egress(text: str | None) -> tuple[str | None, str | None]:
    if not text:  # an empty function-config value is no egress gateway
        return None, None
    if not _EGRESS.fullmatch(text):
        return None, f"expected NAMESPACE/SERVICE, e.g. istio-system/istio-egressgateway, got {text!r}"
    return text, None


#: where the LLM rules run: the sidecars (and gateways) through EnvoyFilters, or ambient mode's
#: waypoints through TrafficExtension (docs/ambient.md)
TARGETS = ("sidecar", "ambient")


def _target(text: str | None) -> tuple[str, str | None]:
    value = (text or TARGETS[0]).strip().lower()
    if value not in TARGETS:
        return TARGETS[0], f"expected one of {', '.join(TARGETS)}, got {text!r}"
    return value, None


def _waypoint(text: str | None) -> tuple[tuple[str | None, str], str | None]:
    """``NAME`` (a waypoint in each source's namespace) or ``NAMESPACE/NAME`` (one waypoint for all)."""
    value = (text or "waypoint").strip()
    ns, sep, name = value.rpartition("/")
    if not _NAMESPACE.fullmatch(name) or (sep and not _NAMESPACE.fullmatch(ns)):
        return (None, "waypoint"), f"expected NAME or NAMESPACE/NAME of a waypoint Gateway, got {text!r}"
    return (ns or None, name), None


def _switch(value: bool | str | None) -> tuple[bool, str | None]:
    if value is None or isinstance(value, bool):
        return bool(value), None
    text = str(value).lower()
    if text not in ("true", "false"):
        return False, f"expected true or false, got {value!r}"
    return text == "true", None


def _istio_version(text: str | None) -> tuple[str, str | None]:
    version = (text or DEFAULT_ISTIO_VERSION).strip()
    if version.count(".") == 2:  # 1.31.2 → 1.31: the output depends on the minor version only
        version = version.rsplit(".", 1)[0]
    if version not in ISTIO_VERSIONS:
        return DEFAULT_ISTIO_VERSION, (f"{text!r} is not a supported Istio version; supported: "
                                       f"{', '.join(ISTIO_VERSIONS)}")
    return version, None


# The table ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RateLimitOptions:
    """``--rate-limit-service NS/SVC:PORT`` and its settings (token limits, docs/budgets.md)."""

    namespace: str
    service: str
    port: int
    timeout: str = "0.1s"  # Envoy's Duration form
    fail_closed: bool = False
    cost_unit: str = "micro"  # a key of COST_UNITS


_RLS = re.compile(rf"({_LABEL})/({_LABEL}):([0-9]{{1,5}})")
_TIMEOUT = re.compile(r"([0-9]+)(ms|s)")


def _rls(text: str | None) -> tuple[tuple[str, str, int] | None, str | None]:
    if text is None:
        return None, None
    m = _RLS.fullmatch(str(text).strip())
    if not m or not 1 <= int(m.group(5)) <= 65535:
        return None, f"expected NAMESPACE/SERVICE:PORT, e.g. llmc-system/ratelimit:8081, got {text!r}"
    return (m.group(1), m.group(3), int(m.group(5))), None


#: --cost-unit → how many units make one unit of the prices' currency
COST_UNITS = {"micro": 1_000_000, "milli": 1_000}


def _cost_unit(text: str | None) -> tuple[str, str | None]:
    value = str(text or "micro").strip()
    if value not in COST_UNITS:
        return "micro", f"expected one of {', '.join(COST_UNITS)}, got {text!r}"
    return value, None


def _rls_timeout(text: str | None) -> tuple[str | None, str | None]:
    """A duration as Envoy writes it ("0.25s"), or None when not given."""
    if text is None:
        return None, None
    m = _TIMEOUT.fullmatch(str(text).strip())
    if not m or int(m.group(1)) == 0:
        return None, f"expected a duration such as 100ms or 1s, got {text!r}"
    return f"{int(m.group(1)) / (1000 if m.group(2) == 'ms' else 1):g}s", None


@dataclass(frozen=True)
class Options:
    """The compiler's settings. Each field declared with :func:`setting` is one setting of every front
    end (``SETTINGS``): adding a field here adds the CLI option, the function-config key, the
    controller flag, their help and their validation."""

    namespace: str = setting(
        "default", "Namespace for objects that name none.", _namespace, short="-n", controller=False,
        example="team-a")
    cluster_domain: str = setting("cluster.local", "Kubernetes cluster DNS domain.", _domain, example="corp.example")
    #: where proxies find mounted Secrets: apiKeySecretRef {name, key} → <secrets_dir>/<name>/<key>
    secrets_dir: str = setting(
        "/etc/llmc/secrets", "Directory in the proxy where Secrets named by apiKeySecretRef are mounted (one "
        "folder per Secret).", _absolute, example="/var/run/llm-keys")
    #: egress-gateway mode: "namespace/service" of the egress gateway (None: shape in sidecars)
    egress_gateway: str | None = setting(
        None, "Egress-gateway mode: NAMESPACE/SERVICE of the egress gateway. Sidecars send LLM traffic to it "
        "over mTLS; it shapes requests and holds the keys.", _egress, example="istio-system/istio-egressgateway")
    egress_labels: tuple[tuple[str, str], ...] = setting(
        (("istio", "egressgateway"),), "Labels of the egress gateway pods, k=v[,k=v].",
        lambda text: parse_labels(text), name="egress-gateway-labels", text_default="istio=egressgateway",
        example="app=llm-egress")
    #: emit Telemetry (access log provider + llm_model tag) and token metrics (opt-in)
    telemetry: bool = setting(
        False, "Also emit Telemetry resources (access log provider from `llmc meshconfig`, llm_model on "
        "istio_requests_total) and token-metric EnvoyFilters.", _switch, switch=True, example="true")
    #: llmc's first telemetry names instead of OpenTelemetry's GenAI ones (docs/observability.md,
    #: "Migrating from the legacy names"); kept for one release, removed in the next
    legacy_telemetry_names: bool = setting(
        False, "Deprecated, for one release: metrics (and with `llmc meshconfig` the access log) in llmc's first "
        "names (istio_llm_total_tokens, request_prompt_tokens, ...) instead of OpenTelemetry's GenAI names.",
        _switch, switch=True, example="true", needs="telemetry")
    #: ("gateway ns/name", namespace its pods run in), sorted: where gateway-bound rules are placed
    #: when the pods are not in the Gateway resource's namespace (e.g. a shared ingress in istio-system)
    gateway_workload_namespaces: tuple[tuple[str, str], ...] = setting(
        (), "GW=NS: the pods of Istio Gateway GW (namespace/name) run in namespace NS (e.g. a shared ingress in "
        "istio-system); llmc writes the gateway's EnvoyFilters there. Repeat for several gateways.",
        lambda value: parse_gateway_workloads(value), name="gateway-workload-namespace", repeatable=True,
        example="llm/llm-gateway=istio-system")
    #: the Istio minor version the output targets (failover needs 1.31)
    istio_version: str = setting(
        DEFAULT_ISTIO_VERSION, f"Istio version of the proxies the output is for ({', '.join(ISTIO_VERSIONS)}; "
        f"{', '.join(ISTIO_LIMITS)} with a warning). Failover (rules[].retries, backendRefs[].priority) needs "
        f"{FAILOVER_ISTIO_VERSION}.", _istio_version, example="1.30")
    #: (namespace, label, value), sorted: the gateway pods rules may run on (a gateway placement's
    #: selector must contain one pair of its namespace); None: no restriction (``llmc render``'s default)
    gateway_selectors: tuple[tuple[str, str, str], ...] | None = setting(
        None, "NAMESPACE/LABEL=VALUE[,...]: the only gateway pods routes may bind to; a route's providers must "
        "select pods with one of these labels in the namespace the gateway's pods run in (else LLMC243). "
        "Default: no restriction (deploy/ passes Istio's ingress and egress gateways).",
        lambda value: parse_gateway_selectors(value), example="istio-system/istio=ingressgateway")
    #: token limits (docs/budgets.md): the rate-limit service, its timeout, and whether its
    #: failure refuses requests; read together as :attr:`rate_limit`
    rate_limit_service: tuple[str, str, int] | None = setting(
        None, "NAMESPACE/SERVICE:PORT of the envoyproxy/ratelimit service that enforces tokenLimits (needed by "
        "any input with tokenLimits). The controller then also writes the service's ConfigMap in that namespace.",
        lambda value: _rls(value), example="llmc-system/ratelimit:8081")
    rate_limit_timeout: str | None = setting(
        None, "Timeout of a call to the rate-limit service, e.g. 100ms or 1s (default 100ms).",
        lambda value: _rls_timeout(value), example="250ms", needs="rate-limit-service")
    rate_limit_fail_closed: bool = setting(
        False, "When the rate-limit service fails, refuse limited requests (OpenAI-format 503) instead of "
        "letting them pass.", _switch, switch=True, example="true", needs="rate-limit-service")

    #: money budgets (docs/budgets.md): what one unit of the rate-limit service's counters is worth
    cost_unit: str = setting(
        "micro", "Unit money budgets are counted in: micro (a millionth of the currency of the prices; budgets "
        "up to 4294.97 per window) or milli (a thousandth; up to 4294967.29).", lambda value: _cost_unit(value),
        example="milli")

    #: sidecar: EnvoyFilters for sidecars and gateways; ambient: a TrafficExtension per waypoint
    target: str = setting(
        "sidecar", "Data plane the output is for: sidecar (EnvoyFilters on sidecars and gateways) or ambient "
        "(ambient mode: a TrafficExtension on each waypoint, Istio >= 1.30; docs/ambient.md).", _target,
        example="ambient")
    #: ambient: (namespace or None for each source's own, name) of the waypoint Gateway that serves the hosts
    waypoint: tuple[str | None, str] = setting(
        (None, "waypoint"), "Ambient target: the waypoint (a Gateway of class istio-waypoint) that serves the LLM "
        "hosts: NAME in each source's namespace, or NAMESPACE/NAME for one waypoint of every namespace.",
        lambda value: _waypoint(value), text_default="waypoint", example="istio-egress/waypoint", needs="target")

    @property
    def ambient(self) -> bool:
        return self.target == "ambient"

    @property
    def rate_limit(self) -> RateLimitOptions | None:
        """The token-limit settings together; None without a rate-limit service."""
        if self.rate_limit_service is None:
            return None
        ns, service, port = self.rate_limit_service
        return RateLimitOptions(namespace=ns, service=service, port=port, timeout=self.rate_limit_timeout or "0.1s",
                                fail_closed=self.rate_limit_fail_closed, cost_unit=self.cost_unit)

    @property
    def supports_failover(self) -> bool:
        return istio_minor(self.istio_version) >= istio_minor(FAILOVER_ISTIO_VERSION)


#: Every setting, in declaration order (the order of ``--help`` and of the function-config keys).
SETTINGS = tuple(_setting(f) for f in dataclasses.fields(Options) if "setting" in f.metadata)

#: option name (as the CLI spells it) → its name in a function config
CONFIG_KEYS = {s.name: s.key for s in SETTINGS}

#: function-config keys that are no compiler setting: what the KRM function does with its input
FUNCTION_ONLY = {"keepSources": '"true": keep the LLMProvider/LLMRoute items in the output'}

#: functionConfig.data keys (kpt: ``-- key=value``) and kustomize plugin config keys: the settings'
#: keys, and keepSources
FUNCTION_OPTIONS = (*CONFIG_KEYS.values(), *FUNCTION_ONLY)


def parse_labels(text: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            return (), f"expected label=value pairs separated by commas, got {item!r}"
        pairs.append((key, value))
    if not pairs:
        return (), "at least one label is needed"
    return tuple(sorted(pairs)), None


def parse_gateway_workloads(text: str | list[str] | None) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """``GW=NS[,GW=NS]`` (or a list of ``GW=NS``): GW is ``namespace/name`` of an Istio Gateway, NS
    the namespace its pods run in."""
    items = text if isinstance(text, list) else (text or "").split(",")
    out: dict[str, str] = {}
    for item in filter(None, (str(p).strip() for p in items)):
        gw, sep, ns = item.partition("=")
        if not sep or not _EGRESS.fullmatch(gw) or not _NAMESPACE.fullmatch(ns):
            return (), (f"expected GATEWAY_NAMESPACE/GATEWAY_NAME=POD_NAMESPACE, e.g. "
                        f"llm/llm-gateway=istio-system, got {item!r}")
        if out.get(gw, ns) != ns:
            return (), f"gateway {gw} is given two namespaces ({out[gw]}, {ns})"
        out[gw] = ns
    return tuple(sorted(out.items())), None


def parse_gateway_selectors(text: str | list[str] | None) -> tuple[tuple[tuple[str, str, str], ...] | None, str | None]:
    """``NAMESPACE/LABEL=VALUE[,…]`` (or a list of them): the gateway pods the operator lets routes
    bind to (None when not given: no restriction). The label key may hold a ``/`` of its own."""
    if text is None:
        return None, None
    items = text if isinstance(text, list) else text.split(",")
    out = set()
    for item in filter(None, (str(p).strip() for p in items)):
        ns, sep, label = item.partition("/")
        key, eq, value = label.partition("=")
        if not sep or not eq or not _NAMESPACE.fullmatch(ns) or not _LABEL_KEY.fullmatch(key) \
                or not _LABEL_VALUE.fullmatch(value):
            return None, f"expected NAMESPACE/LABEL=VALUE[,...], e.g. istio-system/istio=ingressgateway, got {item!r}"
        out.add((ns, key, value))
    if not out:
        return None, "at least one NAMESPACE/LABEL=VALUE is needed"
    return tuple(sorted(out)), None


def parse_options(**values: Any) -> tuple[Options | None, list[tuple[str, str]]]:
    """(Options, []) or (None, [(option, problem), ...]). ``values`` are keyed by :attr:`Setting.param`
    (``secrets_dir``, ``gateway_workload_namespace``), as a front end received them; a setting not
    given takes its default."""
    unknown = set(values) - {s.param for s in SETTINGS}
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    problems: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    for s in SETTINGS:
        given = values.get(s.param)
        value, problem = s.parse(s.text_default if given is None else given)
        if problem:
            problems.append((s.name, problem))
        fields[s.field] = value
    by_name = {s.name: s for s in SETTINGS}
    for s in SETTINGS:
        needed = by_name[s.needs] if s.needs else None
        if needed and values.get(s.param) not in (None, False, "false") and \
                values.get(needed.param) in (None, False, "false"):
            problems.append((s.name, f"--{s.name} needs --{needed.name}"))
    problems += _target_problems(fields)
    if problems:
        return None, problems
    return Options(**fields), []


#: the first Istio with TrafficExtension (extensions.istio.io/v1alpha1), which the ambient target needs
AMBIENT_ISTIO_VERSION = "1.30"


def _target_problems(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """Settings the ambient target cannot honour: no TrafficExtension before Istio 1.30; in ambient
    mode the waypoint is the namespace's egress gateway, so an egress gateway of its own is meaningless."""
    if fields["target"] != "ambient":
        return []
    out = []
    if istio_minor(fields["istio_version"]) < istio_minor(AMBIENT_ISTIO_VERSION):
        out.append(("target", f"ambient needs Istio {AMBIENT_ISTIO_VERSION} or newer (TrafficExtension), "
                              f"--istio-version is {fields['istio_version']}"))
    if fields["telemetry"]:
        out.append(("target", "ambient cannot be combined with --telemetry yet: token metrics are EnvoyFilters, "
                              "which waypoints ignore (istio/istio#43720)"))
    if fields["egress_gateway"]:
        out.append(("target", "ambient cannot be combined with --egress-gateway: the waypoint is the "
                              "namespace's egress gateway"))
    return out
