"""`llmc explain --via <gateway>` against a real Envoy laid out as istiod lays out an ingress gateway
(tests/test_gateways_e2e.py's case): same request, same upstream request path, host and body; the
key comes from a mounted Secret, which explain names instead of reading."""

from __future__ import annotations

import json

import pytest
from ruamel.yaml import YAML

from compiler.explain import Request, explain
from compiler.pipeline import compile_paths
from compiler.resolve import Options
from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, build_gateway_bootstrap
from tests.support.mesh import llmc_render
from tests.test_envoy_e2e import call
from tests.test_gateways_e2e import _clear, pki, secrets, upstreams  # noqa: F401  (fixtures)

pytestmark = pytest.mark.envoy

SOURCE = TESTDATA / "golden" / "ingress-gateway.in.yaml"
BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize("headers,model", [({"user-type": "subscriber"}, "qwen-turbo"), ({}, "qwen-1.8b-chat")])
def test_explain_via_the_ingress_gateway(upstreams, pki, secrets, headers, model):  # noqa: F811
    gateway = next(d for d in YAML(typ="safe").load_all(SOURCE.read_text()) if d["kind"] == "Gateway")
    objects = llmc_render("-f", str(SOURCE), "--secrets-dir", str(secrets))
    layout = build_gateway_bootstrap(objects + [gateway], "istio-system", {"istio": "ingressgateway"},
                                     {h: u.port for h, u in upstreams.items()}, pki[1])
    envoy = Envoy(layout.bootstrap)
    try:
        req_headers = {"content-type": "application/json", **headers}
        status, _, payload = call(envoy, "dashscope.aliyuncs.com", body=BODY, headers=req_headers)
        assert status == 200, payload
    finally:
        envoy.stop()
    received = upstreams["dashscope.aliyuncs.com"].requests[-1]
    compiled = compile_paths([str(SOURCE)], Options(secrets_dir=str(secrets)))
    x = explain(compiled.objects, Request(host="dashscope.aliyuncs.com", headers=req_headers, body=BODY.encode(),
                                          path="/", via="istio-system/llm-gateway"))
    up = x["upstream"]
    assert up["url"] == f"https://dashscope.aliyuncs.com{received.path}"
    assert json.loads(up["body"]) == json.loads(received.body) and json.loads(up["body"])["model"] == model
    assert up["headers"]["authorization"] == f"Bearer <key from {secrets}/llm-keys/dashscope>"
    assert "sk-" not in json.dumps(x)
