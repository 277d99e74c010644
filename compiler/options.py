"""Compiler options, validated in one place for every front end: the CLI (``llmc render`` and
friends, the controller's flags) and the function configs of ``llmc krm`` and the kustomize plugin.

:func:`parse_options` takes the options as text, the way every front end receives them, and returns
:class:`Options` or the list of problems (option name, message); each front end reports them in its
own way (a usage error, a KRM ``results`` entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RateLimitOptions:
    """``--rate-limit-service NS/SVC:PORT`` and its settings (token limits, docs/token-limits.md)."""

    namespace: str
    service: str
    port: int
    timeout: str = "0.1s"  # Envoy's Duration form
    fail_closed: bool = False


#: the token-limit options' names in a function config (kept together so the options table can absorb them)
RATE_LIMIT_CONFIG_KEYS = {"rate-limit-service": "rateLimitService", "rate-limit-timeout": "rateLimitTimeout",
                          "rate-limit-fail-closed": "rateLimitFailClosed"}
_RLS = re.compile(rf"({_LABEL})/({_LABEL}):([0-9]{{1,5}})")
_TIMEOUT = re.compile(r"([0-9]+)(ms|s)")


def parse_rate_limit(service: str | None, timeout: str | None, fail_closed: bool | str,
                     problems: list[tuple[str, str]]) -> RateLimitOptions | None:
    """The token-limit options; problems are appended as (option, message)."""
    if isinstance(fail_closed, str):
        if fail_closed.lower() not in ("true", "false"):
            problems.append(("rate-limit-fail-closed", f"expected true or false, got {fail_closed!r}"))
        fail_closed = fail_closed.lower() == "true"
    seconds = 0.1
    if timeout is not None:
        m = _TIMEOUT.fullmatch(timeout.strip())
        if not m or int(m.group(1)) == 0:
            problems.append(("rate-limit-timeout", f"expected a duration such as 100ms or 1s, got {timeout!r}"))
        else:
            seconds = int(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    if service is None:
        if timeout is not None or fail_closed:
            problems.append(("rate-limit-service", "--rate-limit-timeout and --rate-limit-fail-closed need "
                                                   "--rate-limit-service"))
        return None
    m = _RLS.fullmatch(service.strip())
    if not m or not 1 <= int(m.group(5)) <= 65535:
        problems.append(("rate-limit-service", f"expected NAMESPACE/SERVICE:PORT, e.g. llmc-system/ratelimit:8081, "
                                               f"got {service!r}"))
        return None
    return RateLimitOptions(namespace=m.group(1), service=m.group(3), port=int(m.group(5)),
                            timeout=f"{seconds:g}s", fail_closed=bool(fail_closed))


@dataclass(frozen=True)
class Options:
    namespace: str = "default"
    cluster_domain: str = "cluster.local"
    #: where proxies find mounted Secrets: apiKeySecretRef {name, key} → <secrets_dir>/<name>/<key>
    secrets_dir: str = "/etc/llmc/secrets"
    #: egress-gateway mode: "namespace/service" of the egress gateway (None: shape in sidecars)
    egress_gateway: str | None = None
    egress_labels: tuple[tuple[str, str], ...] = (("istio", "egressgateway"),)
    #: emit Telemetry (access log provider + llm_model tag) and token metrics (opt-in)
    telemetry: bool = False
    #: ("gateway ns/name", namespace its pods run in), sorted: where gateway-bound rules are placed
    #: when the pods are not in the Gateway resource's namespace (e.g. a shared ingress in istio-system)
    gateway_workload_namespaces: tuple[tuple[str, str], ...] = ()
    #: the Istio minor version the output targets (failover needs 1.31)
    istio_version: str = DEFAULT_ISTIO_VERSION
    #: (namespace, label, value), sorted: the gateway pods rules may run on (a gateway placement's
    #: selector must contain one pair of its namespace); None: no restriction (``llmc render``'s default)
    gateway_selectors: tuple[tuple[str, str, str], ...] | None = None
    #: token limits (issue 30): the rate-limit service, its timeout, and whether its failure refuses requests
    rate_limit: RateLimitOptions | None = None

    @property
    def supports_failover(self) -> bool:
        return istio_minor(self.istio_version) >= istio_minor(FAILOVER_ISTIO_VERSION)


#: option name (as the CLI spells it) → its name in a function config
CONFIG_KEYS = {"namespace": "namespace", "cluster-domain": "clusterDomain", "secrets-dir": "secretsDir",
               "egress-gateway": "egressGateway", "egress-gateway-labels": "egressGatewayLabels",
               "telemetry": "telemetry", "gateway-workload-namespace": "gatewayWorkloadNamespace",
               "istio-version": "istioVersion", "gateway-selectors": "gatewaySelectors",
               **RATE_LIMIT_CONFIG_KEYS}


#: functionConfig.data keys (kpt: ``-- key=value``) and kustomize plugin config keys: the function
#: configs' names of the options above, and keepSources
FUNCTION_OPTIONS = ("namespace", "clusterDomain", "secretsDir", "egressGateway", "egressGatewayLabels", "telemetry",
                    "gatewayWorkloadNamespace", "istioVersion", "gatewaySelectors",
                    *RATE_LIMIT_CONFIG_KEYS.values(), "keepSources")


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


def parse_options(namespace: str = "default", cluster_domain: str = "cluster.local",
                  secrets_dir: str = "/etc/llmc/secrets", egress_gateway: str | None = None,
                  egress_gateway_labels: str = "istio=egressgateway", telemetry: bool | str = False,
                  gateway_workload_namespace: str | list[str] | None = None,
                  istio_version: str = DEFAULT_ISTIO_VERSION,
                  gateway_selectors: str | list[str] | None = None, rate_limit_service: str | None = None,
                  rate_limit_timeout: str | None = None, rate_limit_fail_closed: bool | str = False,
                  ) -> tuple[Options | None, list[tuple[str, str]]]:
    """(Options, []) or (None, [(option, problem), ...])."""
    problems: list[tuple[str, str]] = []
    if not _NAMESPACE.fullmatch(namespace):
        problems.append(("namespace", f"{namespace!r} is not a namespace name (a DNS-1123 label)"))
    if not _DOMAIN.fullmatch(cluster_domain):
        problems.append(("cluster-domain", f"{cluster_domain!r} is not a DNS domain, e.g. cluster.local"))
    if not secrets_dir.startswith("/"):
        problems.append(("secrets-dir", f"{secrets_dir!r} must be an absolute path in the proxy container"))
    if egress_gateway is not None and not _EGRESS.fullmatch(egress_gateway):
        problems.append(("egress-gateway", f"expected NAMESPACE/SERVICE, e.g. istio-system/istio-egressgateway, "
                                           f"got {egress_gateway!r}"))
    labels, problem = parse_labels(egress_gateway_labels)
    if problem:
        problems.append(("egress-gateway-labels", problem))
    if isinstance(telemetry, str):
        if telemetry.lower() not in ("true", "false"):
            problems.append(("telemetry", f"expected true or false, got {telemetry!r}"))
        telemetry = telemetry.lower() == "true"
    workloads, problem = parse_gateway_workloads(gateway_workload_namespace)
    if problem:
        problems.append(("gateway-workload-namespace", problem))
    version = istio_version.strip()
    if version.count(".") == 2:  # 1.31.2 → 1.31: the output depends on the minor version only
        version = version.rsplit(".", 1)[0]
    if version not in ISTIO_VERSIONS:
        problems.append(("istio-version", f"{istio_version!r} is not a supported Istio version; supported: "
                                          f"{', '.join(ISTIO_VERSIONS)}"))
    selectors, problem = parse_gateway_selectors(gateway_selectors)
    if problem:
        problems.append(("gateway-selectors", problem))
    rate_limit = parse_rate_limit(rate_limit_service, rate_limit_timeout, rate_limit_fail_closed, problems)
    if problems:
        return None, problems
    return Options(rate_limit=rate_limit, namespace=namespace, cluster_domain=cluster_domain, secrets_dir=secrets_dir,
                   egress_gateway=egress_gateway, egress_labels=labels, telemetry=telemetry,
                   gateway_workload_namespaces=workloads, istio_version=version,
                   gateway_selectors=selectors), []
