"""Every generated name is valid for its kind, for arbitrary valid inputs (names.py is the one place
that makes them): object names and pod volume names are DNS-1123 labels."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import Options, compile_text
from compiler.mounts import plan
from compiler.names import is_label
from tests.support.flow import to_flow

SUBDOMAIN = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?){0,2}",
                          fullmatch=True)
LABEL_VALUE = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,30}[A-Za-z0-9])?", fullmatch=True)
RULE = st.from_regex(r"[a-zA-Z0-9]([-_.a-zA-Z0-9]{0,20}[a-zA-Z0-9])?", fullmatch=True)


def sources(provider: str, secret: str, app: str, rule: str) -> str:
    docs = [
        {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider", "metadata": {"name": provider},
         "spec": {"host": "p.example.com", "path": "/v1/chat/completions", "workloadSelector": {"labels": {"app": app}},
                  "configs": {"defaultConfig": {"openAIConfig": {
                      "model": "m", "apiKeySecretRef": {"name": secret, "key": "k"}}}}}},
        {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute", "metadata": {"name": provider},
         "spec": {"host": "p.example.com", "rules": [{"name": rule, "backendRefs": [{"providerHost": "p.example.com"}]}]}},
    ]
    return "\n---\n".join(to_flow(d) for d in docs)


def assert_names_valid(text: str, opts: Options) -> None:
    result = compile_text(text, opts)
    assert result.ok, [str(d) for d in result.diagnostics.items]
    for obj in result.objects:
        assert is_label(obj["metadata"]["name"]), (obj["kind"], obj["metadata"]["name"])
    for entry in plan(result.program):
        for volume in entry["patch"]["spec"]["template"].get("spec", {}).get("volumes", []):
            assert is_label(volume["name"]), volume
        for key in ("sidecar.istio.io/userVolume",):
            annotations = entry["patch"]["spec"]["template"].get("metadata", {}).get("annotations", {})
            if key in annotations:

                assert all(is_label(v["name"]) for v in json.loads(annotations[key])), annotations[key]


def test_selector_values_and_secret_names_that_are_not_labels():
    """`My_App.v2` (a valid label value) named a Telemetry `llmc-telemetry-My_App.v2`; Secret `llm.keys`
    (a valid Secret name) named a volume `llmc-llm.keys`: neither is a DNS label."""
    assert_names_valid(sources("p", "llm.keys", "My_App.v2", "r"), Options(telemetry=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(provider=SUBDOMAIN, secret=SUBDOMAIN, app=LABEL_VALUE, rule=RULE, telemetry=st.booleans())
def test_every_generated_name_is_a_label(provider, secret, app, rule, telemetry):
    assert_names_valid(sources(provider, secret, app, rule), Options(telemetry=telemetry))
