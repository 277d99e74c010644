"""Synthetic inputs for the compile benchmark: N providers and N LLMRoutes, 3 weighted rules each.

Deterministic (no randomness): provider i has host ``p<i>.example.com``; route i targets the
Service ``chat-<i>`` and splits each rule across three providers by weight; namespaces hold 50
providers each (``per_namespace``), so routes reference providers of their own namespace.
Providers name their key with ``apiKeySecretRef``, or with ``literal=True`` carry a literal
``apiKey`` (ASM's own style; each one draws warning LLMC215).
"""

from __future__ import annotations

from pathlib import Path

PER_NAMESPACE = 50


def provider(i: int, literal: bool = False, per_namespace: int = PER_NAMESPACE) -> str:
    ns = f"team-{i // per_namespace}"
    key = f"apiKey: sk-bench-{i:08d}" if literal else f"apiKeySecretRef: {{name: llm-keys, key: p{i}}}"
    return f"""apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: provider-{i}, namespace: {ns}}}
spec:
  host: p{i}.example.com
  path: /v1/chat/completions
  configs:
    defaultConfig:
      openAIConfig: {{model: model-{i}, stream: false, {key}}}
    routeSpecificConfigs:
      premium:
        openAIConfig: {{model: model-{i}-large}}
"""


def route(i: int, n: int, per_namespace: int = PER_NAMESPACE) -> str:
    ns_first = (i // per_namespace) * per_namespace
    ns_size = min(per_namespace, n - ns_first)
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
metadata: {{name: route-{i}, namespace: team-{i // per_namespace}}}
spec:
  host: chat-{i}
  rules:
{chr(10).join(rules)}
"""


def write_inputs(directory: Path, n: int, literal: bool = False, per_namespace: int = PER_NAMESPACE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "providers.yaml").open("w") as f:
        f.write("---\n".join(provider(i, literal, per_namespace) for i in range(n)))
    with (directory / "routes.yaml").open("w") as f:
        f.write("---\n".join(route(i, n, per_namespace) for i in range(n)))
    return directory
