"""Synthetic inputs for the compile benchmark: N providers and N LLMRoutes, 3 weighted rules each.

Deterministic (no randomness): provider i has host ``p<i>.example.com``; route i targets the
Service ``chat-<i>`` and splits each rule across three providers by weight; namespaces hold 50
providers each, so routes reference providers of their own namespace.
"""

from __future__ import annotations

from pathlib import Path

PER_NAMESPACE = 50


def provider(i: int) -> str:
    ns = f"team-{i // PER_NAMESPACE}"
    return f"""apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: provider-{i}, namespace: {ns}}}
spec:
  host: p{i}.example.com
  path: /v1/chat/completions
  configs:
    defaultConfig:
      openAIConfig: {{model: model-{i}, stream: false, apiKeySecretRef: {{name: llm-keys, key: p{i}}}}}
    routeSpecificConfigs:
      premium:
        openAIConfig: {{model: model-{i}-large}}
"""


def route(i: int, n: int) -> str:
    ns_first = (i // PER_NAMESPACE) * PER_NAMESPACE
    ns_size = min(PER_NAMESPACE, n - ns_first)
    pick = [ns_first + (i + k) % ns_size for k in range(3)]
    backends = "\n".join(f"    - {{providerHost: p{p}.example.com, weight: {w}}}"
                         for p, w in zip(pick, (60, 30, 10), strict=True))
    rules = []
    for name, match in (("premium", "{headers: {x-tier: {exact: premium}}}"),
                        ("beta", "{headers: {x-beta: {prefix: 'yes'}}}"), ("default", None)):
        m = f"\n    matches: [{match}]" if match else ""
        rules.append(f"  - name: {name}{m}\n    backendRefs:\n{backends}")
    return f"""apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: route-{i}, namespace: team-{i // PER_NAMESPACE}}}
spec:
  host: chat-{i}
  rules:
{chr(10).join(rules)}
"""


def write_inputs(directory: Path, n: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "providers.yaml").open("w") as f:
        f.write("---\n".join(provider(i) for i in range(n)))
    with (directory / "routes.yaml").open("w") as f:
        f.write("---\n".join(route(i, n) for i in range(n)))
    return directory
