"""`llmc explain` against a real Envoy for the provider-protocol e2e cases (tests/test_providers_e2e.py):
the same request goes through Envoy to the Anthropic, Azure and OpenAI-compatible doubles, and
the URL path, credential header (masked) and body the upstream received equal what `explain`
predicts — translated where the provider's protocol needs it."""

from __future__ import annotations

import json

import pytest

from compiler.explain import Request, explain
from compiler.pipeline import compile_paths
from compiler.resolve import Options
from tests.conftest import TESTDATA
from tests.test_envoy_e2e import call
from tests.test_providers_e2e import _clear, envoy, logs, upstreams  # noqa: F401  (fixtures)

pytestmark = pytest.mark.envoy

KEYS = ("sk-openai-00000000000000", "sk-ant-000000000000000000", "sk-azure-0000000000000000",
        "sk-gw-00000000000000000000")
BODY = json.dumps({"model": "app-model", "max_tokens": 64, "temperature": 0.5,
                   "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})


def masked(text: str) -> str:
    for key in KEYS:
        text = text.replace(key, "***")
    return text


@pytest.mark.parametrize("host,auth", [("openai.example.com", "authorization"), ("gw.example.com", "x-api-key"),
                                       ("claude.example.com", "x-api-key"), ("azure.example.com", "api-key")])
def test_explain_predicts_each_protocols_upstream_request(envoy, upstreams, host, auth):  # noqa: F811
    objects = compile_paths([str(TESTDATA / "e2e" / "providers.yaml")], Options()).objects
    headers = {"content-type": "application/json", "authorization": "Bearer sk-app-own-key"}
    x = explain(objects, Request(host=host, headers=headers, body=BODY.encode()))
    status, _, payload = call(envoy, host, body=BODY, headers=headers, path="/v1/chat/completions")
    assert status == 200, payload
    (received,) = upstreams[host].requests
    up = x["upstream"]
    assert up["url"].split(host, 1)[1] == received.path
    assert up["headers"][auth] == masked(received.headers[auth])
    assert json.loads(up["body"]) == json.loads(received.body)
    assert "sk-" not in json.dumps(x).replace("sk-app-own-key", "")
