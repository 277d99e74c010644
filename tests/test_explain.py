"""`llmc explain` against the real thing: for each case of the real-Envoy e2e suites (the seed's
scenarios, the data-plane hardening and the model-routing meshes), the same request is sent through
a real Envoy laid out as istiod would, and what the upstream received is compared with the upstream
request `explain` predicts (for weighted rules: the candidates, and the shaping of a forced pick);
errors compare status and OpenAI error code. `explain` never prints a key.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from compiler.cli import app
from compiler.explain import Request, explain
from compiler.pipeline import compile_paths
from compiler.resolve import Options
from tests.conftest import REPO, TESTDATA
from tests.support.mesh import running_envoy
from tests.support.upstream import serving
from tests.test_envoy_e2e import call

pytestmark = pytest.mark.envoy

SOURCES = [str(REPO / "samples" / "seed"), str(TESTDATA / "e2e" / "hardening.yaml"),
           str(TESTDATA / "e2e" / "models.yaml")]
PLAIN = ("one.example.com", "two.example.com", "three.example.com", "four.example.com", "openai.example.com",
         "qwen.example.com", "kimi.example.com", "dashscope.aliyuncs.com", "api.moonshot.cn")
KEYS = ("sk-one-0000000000000000", "sk-two-0000000000000000", "sk-three-000000000000000",
        "sk-four-00000000000000000", "sk-openai-000000000000000", "sk-qwen-00000000000000000",
        "sk-kimi-00000000000000000", "${API_KEY of dashscope}", "${ API_KEY of dashscope}",
        "${API_KEY of Moonshot}")
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})

# (id, host, headers, body, path, method)
CASES = [
    ("seed-provider", "dashscope.aliyuncs.com", {}, '{"messages":[{"role":"user","content":"hi"}]}', "/", "POST"),
    ("seed-header-rule", "dashscope.aliyuncs.com", {"user-type": "subscriber"}, CHAT, "/", "POST"),
    ("seed-moonshot", "api.moonshot.cn", {}, CHAT, "/v1/chat/completions", "POST"),
    ("gold-weighted", "teams.example.com", {"authorization": "Bearer team-gold"}, CHAT, "/v1/chat/completions", "POST"),
    ("others", "teams.example.com", {"authorization": "Bearer team-silver"}, CHAT, "/v1/chat/completions", "POST"),
    ("dotted-rule", "names.example.com", {"x-team": "dotted"}, CHAT, "/v1/chat/completions", "POST"),
    ("stream-by-client", "four.example.com", {}, '{"model":"m","messages":[],"stream":true}', "/v1/chat/completions",
     "POST"),
    ("model-gpt", "models-gateway", {}, json.dumps({"model": "gpt-4o", "messages": []}), "/v1/chat/completions", "POST"),
    ("model-alias", "models-gateway", {}, CHAT, "/v1/chat/completions", "POST"),
    ("model-split", "models-gateway", {}, json.dumps({"model": "kimi-x", "messages": []}), "/v1/chat/completions",
     "POST"),
    ("model-header", "models-gateway", {"x-team": "blue"}, json.dumps({"model": "claude-3", "messages": []}),
     "/v1/chat/completions", "POST"),
    ("embeddings", "models-gateway", {}, json.dumps({"model": "text-embedding-3", "input": "a"}), "/v1/embeddings",
     "POST"),
    # errors
    ("bad-json", "dashscope.aliyuncs.com", {}, "{not json", "/", "POST"),
    ("get", "api.moonshot.cn", {}, "", "/v1/files", "GET"),
    ("pin-spoof", "teams.example.com", {"x-llmc-provider": "llmc/default/teams/gold/p-one"}, CHAT, "/", "POST"),
    ("no-model-rule", "models-gateway", {}, json.dumps({"model": "mistral", "messages": []}), "/", "POST"),
    ("unknown-endpoint", "models-gateway", {}, json.dumps({"model": "gpt-4o", "input": "a"}), "/v1/files", "POST"),
    ("models-list", "models-gateway", {}, "", "/v1/models", "GET"),
]


@pytest.fixture(scope="module")
def objects():
    result = compile_paths(SOURCES, Options())
    assert result.ok
    return result.objects


@pytest.fixture(scope="module")
def upstreams():
    with serving(PLAIN) as ups:
        yield ups


@pytest.fixture(scope="module")
def envoy(objects, upstreams):
    # TLS origination is a DestinationRule detail explain reports as the URL scheme; the harness runs
    # every provider in plain HTTP here so that one set of recording upstreams serves all cases.
    plain = [o for o in objects if o["kind"] != "DestinationRule"]
    with running_envoy(plain, upstreams) as proxy:
        yield proxy


def masked(text: str) -> str:
    for key in sorted(KEYS, key=len, reverse=True):
        text = text.replace(key, "***")
    return text


def send(envoy, upstreams, host, headers, body, path, method):
    for u in upstreams.values():
        u.clear()
    status, resp_headers, payload = call(envoy, host, body=body or None, headers=headers, path=path, method=method)
    got = [(h, r) for h, u in upstreams.items() for r in u.requests]
    return status, payload, got


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_explain_predicts_what_envoy_does(objects, envoy, upstreams, case):
    _, host, headers, body, path, method = case
    req_headers = {"content-type": "application/json", **headers}
    x = explain(objects, Request(host=host, method=method, path=path, headers=req_headers, body=body.encode()))
    assert "sk-" not in json.dumps(x) and "API_KEY" not in json.dumps(x)
    weighted = len(x.get("candidates", [])) > 1
    status, payload, got = send(envoy, upstreams, host, req_headers, body, path, method)
    if "upstream" not in x:
        assert not got
        assert x["result"]["status"] == status
        if x["result"].get("body"):
            expected = json.loads(x["result"]["body"])
            assert json.loads(payload) == expected
        return
    (up_host, received), = got
    if weighted:  # compare the shaping of a forced pick: the provider this request reached
        provider = next(c["provider"] for c in x["candidates"] if PROVIDER_HOSTS[c["provider"]] == up_host)
        x = explain(objects, Request(host=host, method=method, path=path, headers=req_headers, body=body.encode()),
                    provider=provider)
        assert {PROVIDER_HOSTS[c["provider"]] for c in x["candidates"]} >= {up_host}
    up = x["upstream"]
    assert up["url"].split("://", 1)[1] == f"{up_host}{received.path}"
    assert up["body"].encode() == received.body
    for name in ("authorization", "content-type", "accept-encoding"):
        if name in received.headers:
            assert up["headers"][name] == masked(received.headers[name]), name


PROVIDER_HOSTS = {"p-one": "one.example.com", "p-two": "two.example.com", "p-three": "three.example.com",
                  "p-four": "four.example.com", "m-openai": "openai.example.com", "m-qwen": "qwen.example.com",
                  "m-kimi": "kimi.example.com", "dashscope-qwen": "dashscope.aliyuncs.com", "moonshot": "api.moonshot.cn"}


def test_weighted_candidates_are_where_the_traffic_goes(objects, envoy, upstreams):
    headers = {"content-type": "application/json", "authorization": "Bearer team-gold"}
    x = explain(objects, Request(host="teams.example.com", headers=headers, body=CHAT.encode()))
    reached = set()
    for _ in range(30):
        _, _, got = send(envoy, upstreams, "teams.example.com", headers, CHAT, "/", "POST")
        reached |= {h for h, _ in got}
    assert {PROVIDER_HOSTS[c["provider"]] for c in x["candidates"]} == reached == {"one.example.com", "two.example.com"}


def test_cli_text_and_json_never_print_a_key():
    runner = CliRunner()
    args = ["explain", "-f", str(TESTDATA / "e2e" / "hardening.yaml"), "--host", "teams.example.com",
            "-H", "authorization: Bearer team-gold", "-d", CHAT, "--seed", "7"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert "candidates: p-one (weight 50, 50%), p-two (weight 50, 50%)" in text.stdout
    assert "authorization: Bearer ***" in text.stdout and "sk-" not in text.stdout
    again = runner.invoke(app, args)
    assert again.stdout == text.stdout  # --seed makes the pick reproducible
    js = runner.invoke(app, [*args, "-o", "json"])
    data = json.loads(js.stdout)
    assert data["rule"] == "default/teams/gold" and "sk-" not in js.stdout


def test_key_files_are_never_read():
    result = compile_paths([str(REPO / "samples" / "secret-ref")], Options())
    x = explain(result.objects, Request(host="dashscope.aliyuncs.com", headers={"content-type": "application/json"},
                                        body=b'{"messages":[]}', namespace="llm-apps"))
    assert x["upstream"]["headers"]["authorization"].startswith("Bearer <key from /etc/llmc/secrets/")


def test_a_caller_in_another_namespace_is_not_llmc_traffic():
    result = compile_paths([str(REPO / "samples" / "secret-ref")], Options())
    with pytest.raises(Exception, match="no VirtualService for host 'dashscope.aliyuncs.com' reaches a proxy in "
                                        "namespace default"):
        explain(result.objects, Request(host="dashscope.aliyuncs.com", body=b"{}"))


def test_failover_tries_are_each_shaped_for_their_provider():
    """A failover rule: explain runs the upstream filter of each provider's cluster, in order, on the
    original body (the e2e suite on Envoy 1.39 checks the same shaping at the upstreams)."""
    result = compile_paths([str(TESTDATA / "e2e" / "failover.yaml")], Options())
    assert result.ok
    x = explain(result.objects, Request(host="chat.example.com", headers={"content-type": "application/json",
                                                                          "x-case": "backup"},
                                        body=b'{"messages":[{"role":"user","content":"hi"}]}'))
    tries = x["attempts"]
    assert [t["url"] for t in tries] == ["http://one.example.com/one/chat/completions",
                                         "http://two.example.com/two/chat/completions"]
    assert [json.loads(t["body"])["model"] for t in tries] == ["one-model", "two-model"]
    assert all(t["headers"]["authorization"] == "Bearer ***" for t in tries)
    assert "sk-" not in json.dumps(x)


@pytest.mark.parametrize("host,url,auth_header", [
    ("claude.example.com", "/v1/messages", "x-api-key"),
    ("azure.example.com", "/openai/deployments/dep-mini/chat/completions?api-version=2024-10-21", "api-key"),
])
def test_translated_and_header_only_protocols(host, url, auth_header):
    """explain shows the request as the provider's protocol needs it (the filter's own translation)."""
    result = compile_paths([str(TESTDATA / "e2e" / "providers.yaml")], Options())
    assert result.ok
    x = explain(result.objects, Request(host=host, headers={"content-type": "application/json"},
                                        body=json.dumps({"model": "m", "messages": [
                                            {"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "hi"}]}).encode()))
    up = x["upstream"]
    assert up["url"].endswith(url), up["url"]
    assert up["headers"][auth_header] == "***" and "sk-" not in json.dumps(x)
    if host.startswith("claude"):
        sent = json.loads(up["body"])
        assert sent["system"] == [{"type": "text", "text": "be brief"}]
        assert sent["model"] == "claude-test" and sent["max_tokens"] == 512
        assert up["headers"]["anthropic-version"]


def test_every_try_of_every_rule_has_its_key_masked():
    """A provider that is only ever a later try (p-three: the backup of `chain` and `weighted`) has its
    literal key in the failover routes' upstream-filter contexts only: masked there too, in the JSON
    and in the text."""
    from compiler.explain import format_text

    result = compile_paths([str(TESTDATA / "e2e" / "failover.yaml")], Options())
    x = explain(result.objects, Request(host="chat.example.com", headers={"content-type": "application/json"},
                                        body=b'{"messages":[{"role":"user","content":"hi"}]}'))
    assert [t["url"] for t in x["attempts"]][-1] == "http://three.example.com/three/chat/completions"
    assert x["attempts"][-1]["headers"]["authorization"] == "Bearer ***"
    for text in (json.dumps(x), format_text(x)):
        assert "sk-" not in text
