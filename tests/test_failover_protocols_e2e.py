"""Failover across protocols (issue 27) through a real Envoy 1.39 laid out as istiod 1.31 would, with
the official ``openai`` SDK as the app: an OpenAI primary answers 503 and an Anthropic (or Gemini)
backup answers, streamed and not; the answer is translated by the driver of the try that answered
(the per-try filter's mark, which neither the client nor a provider ever sees) and its usage recorded.
The doubles check every request against their API's documentation (tests/support/anthropic.py,
tests/support/gemini.py), so a try shaped for another provider fails."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import TESTDATA
from tests.support import anthropic, gemini
from tests.support.anthropic import AnthropicUpstream
from tests.support.envoy_harness import access_log, envoy_minor, logged_entries
from tests.support.gemini import GeminiUpstream
from tests.support.mesh import llmc_render, running_envoy
from tests.support.sdk import APP_KEY, chat, chat_stream, post, status_error
from tests.support.upstream import Upstream

pytestmark = [pytest.mark.envoy, pytest.mark.skipif(
    envoy_minor() < (1, 39),
    reason="failover needs Envoy 1.39+ (Istio 1.31); run `python -m tests.envoy_versions 1.39.3`")]

ROUTE_HOST = "chat.example.com"
KEYS = {"openai.example.com": ("authorization", "Bearer sk-openai-00000000000000"),
        "claude.example.com": ("x-api-key", "sk-ant-claude-0000000000"),
        "claude-open.example.com": ("x-api-key", "sk-ant-open-000000000000"),
        "gemini.example.com": ("x-goog-api-key", "sk-gemini-00000000000000")}
LOG_FORMAT = {"provider": "%DYNAMIC_METADATA(llmc:provider)%", "first": "%DYNAMIC_METADATA(llmc:first_provider)%",
              "prompt": "%DYNAMIC_METADATA(llmc:request_prompt_tokens)%",
              "completion": "%DYNAMIC_METADATA(llmc:request_completion_tokens)%",
              "total": "%DYNAMIC_METADATA(llmc:request_total_tokens)%",
              "tries": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "case": "%REQ(x-case)%"}
CLAUDE_PROMPT = sum(anthropic.USAGE[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                                 "cache_read_input_tokens"))


@pytest.fixture(scope="module")
def upstreams():
    ups = {"openai.example.com": Upstream("openai.example.com", sse_pause=0.3),
           "claude.example.com": AnthropicUpstream("claude.example.com", sse_pause=0.3),
           "claude-open.example.com": AnthropicUpstream("claude-open.example.com", sse_pause=0.3),
           "gemini.example.com": GeminiUpstream("gemini.example.com", sse_pause=0.3)}
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def log_path(tmp_path_factory):
    return tmp_path_factory.mktemp("failover-protocols") / "access.log"


@pytest.fixture(scope="module")
def objects():
    return llmc_render("-f", str(TESTDATA / "e2e" / "failover-protocols.yaml"), "--istio-version", "1.31")


@pytest.fixture(scope="module")
def envoy(objects, upstreams, log_path):
    with running_envoy(objects, upstreams, every_patch=True,
                       access_logs=[access_log(str(log_path), LOG_FORMAT)]) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def received(upstreams) -> list[tuple[str, object]]:
    got = [(r, h) for h, u in upstreams.items() for r in u.requests]
    return [(h, r) for r, h in sorted(got, key=lambda item: item[0].order)]


def assert_own(host: str, req) -> None:
    """A try as ``host`` receives its own key only, no client credential, no internal header."""
    name, value = KEYS[host]
    assert req.headers.get(name) == value, (host, req.headers)
    text = json.dumps(req.headers) + req.body.decode()
    for other, (_, key) in KEYS.items():
        assert other == host or key.split()[-1] not in text, (host, f"the key of {other}")
    assert APP_KEY not in text
    assert not any(k.startswith("x-llmc-") for k in req.headers), req.headers


def log_lines(path, case: str, n: int = 1) -> list[dict]:
    deadline = time.monotonic() + 20  # a bounded wait for Envoy's access-log flush on a loaded machine
    while True:
        lines = [x for x in logged_entries(path) if x["case"] == case]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)  # not a busy loop: Envoy needs the CPU to write the line


def test_openai_503_then_anthropic_answers(envoy, upstreams, log_path):
    upstreams["openai.example.com"].fail = "503"
    completion = chat(envoy.port, ROUTE_HOST, headers={"x-case": "to-claude"})
    tries = received(upstreams)
    assert [h for h, _ in tries] == ["openai.example.com", "claude.example.com"]
    assert_own("openai.example.com", tries[0][1])
    assert_own("claude.example.com", tries[1][1])
    assert upstreams["claude.example.com"].problems == [[]]
    assert tries[1][1].path == "/v1/messages" and tries[1][1].json()["model"] == "claude-x"
    assert tries[0][1].json()["model"] == "openai-model"
    assert completion.choices[0].message.content == "Hello from Claude" and completion.model == "claude-x"
    assert completion.usage.prompt_tokens == CLAUDE_PROMPT
    (line,) = log_lines(log_path, "to-claude")
    assert line["provider"] == "p-claude" and line["first"] == "p-openai" and str(line["tries"]) == "2"
    assert str(line["total"]) == str(CLAUDE_PROMPT + anthropic.USAGE["output_tokens"])


def test_openai_503_then_anthropic_streams(envoy, upstreams, log_path):
    upstreams["openai.example.com"].fail = "503"
    streamed = chat_stream(envoy.port, ROUTE_HOST, headers={"x-case": "to-claude"},
                           hold=upstreams["claude.example.com"])
    assert [h for h, _ in received(upstreams)] == ["openai.example.com", "claude.example.com"]
    assert upstreams["claude.example.com"].problems == [[]]
    assert streamed.text == "Hello"
    assert streamed.usage.total_tokens == CLAUDE_PROMPT + anthropic.USAGE["output_tokens"]
    assert not any(k.startswith("x-llmc-") for k in streamed.headers)
    # streamed through, not buffered: the double pauses after its first event
    assert streamed.lead > upstreams["claude.example.com"].sse_pause / 2, (streamed.first_at, streamed.total)
    line = log_lines(log_path, "to-claude")[-1]
    assert line["provider"] == "p-claude" and str(line["total"]) == str(CLAUDE_PROMPT + anthropic.USAGE["output_tokens"])


@pytest.mark.parametrize("stream", [False, True])
def test_openai_503_then_gemini_answers(envoy, upstreams, stream):
    upstreams["openai.example.com"].fail = "503"
    if stream:
        out = chat_stream(envoy.port, ROUTE_HOST, headers={"x-case": "to-gemini"})
        assert out.text == "Hello" and out.usage.total_tokens == gemini.PROMPT + gemini.COMPLETION
    else:
        out = chat(envoy.port, ROUTE_HOST, headers={"x-case": "to-gemini"})
        assert out.choices[0].message.content == "Hello from Gemini" and out.model == "gemini-x"
        assert out.usage.completion_tokens == gemini.COMPLETION
    tries = received(upstreams)
    assert [h for h, _ in tries] == ["openai.example.com", "gemini.example.com"]
    assert upstreams["gemini.example.com"].problems == [[]]
    want = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    assert tries[1][1].path == f"/v1beta/models/gemini-x{want}"
    assert_own("gemini.example.com", tries[1][1])


def test_no_failure_is_not_translated(envoy, upstreams):
    completion = chat(envoy.port, ROUTE_HOST, headers={"x-case": "to-claude"})
    assert [h for h, _ in received(upstreams)] == ["openai.example.com"]
    assert completion.choices[0].message.content == "hi" and completion.model == "openai-model-2026"


def test_anthropic_503_then_openai_answers_untranslated(envoy, upstreams):
    upstreams["claude.example.com"].fail = "503"
    completion = chat(envoy.port, ROUTE_HOST, headers={"x-case": "to-openai"})
    tries = received(upstreams)
    assert [h for h, _ in tries] == ["claude.example.com", "openai.example.com"]
    assert upstreams["claude.example.com"].problems == [[]]
    assert_own("openai.example.com", tries[1][1])
    assert tries[1][1].path == "/v1/chat/completions" and tries[1][1].json()["model"] == "openai-model"
    assert "anthropic-version" not in tries[1][1].headers  # the first try's protocol's fixed header
    assert completion.choices[0].message.content == "hi"


@pytest.mark.parametrize("size", [1024, 70 * 1024])
def test_the_first_try_shaped_downstream_or_upstream(envoy, upstreams, size):
    """A body up to 64 KiB: the first try is shaped by the downstream filter and the client's body kept
    for later tries; a larger one: every try shaped upstream. Either way each try is its provider's."""
    upstreams["openai.example.com"].fail = "503"
    text = "x" * size
    completion = chat(envoy.port, ROUTE_HOST, headers={"x-case": "to-claude"},
                      messages=[{"role": "user", "content": text}])
    tries = received(upstreams)
    assert [h for h, _ in tries] == ["openai.example.com", "claude.example.com"]
    first, second = tries[0][1].json(), tries[1][1].json()
    assert first["model"] == "openai-model" and first["messages"] == [{"role": "user", "content": text}]
    assert upstreams["claude.example.com"].problems == [[]]
    assert second["messages"] == [{"role": "user", "content": [{"type": "text", "text": text}]}]
    assert_own("openai.example.com", tries[0][1])
    assert_own("claude.example.com", tries[1][1])
    assert completion.choices[0].message.content == "Hello from Claude"


@pytest.mark.parametrize("case, failing", [("to-claude", "openai.example.com"), ("to-openai", "claude.example.com")])
def test_a_keyed_anthropic_try_never_gets_the_clients_anthropic_beta(envoy, upstreams, case, failing):
    """A client's anthropic-beta (a beta feature, opted into with the platform's key and bill) never
    reaches a keyed Anthropic try, first or backup (was: a failover route kept it for every try)."""
    upstreams[failing].fail = "503"
    chat(envoy.port, ROUTE_HOST, headers={"x-case": case, "anthropic-beta": "tools-2024-04-04"})
    tries = received(upstreams)
    assert sorted(h for h, _ in tries) == ["claude.example.com", "openai.example.com"]
    claude = next(r for h, r in tries if h == "claude.example.com")
    assert "anthropic-beta" not in claude.headers, claude.headers
    assert_own("claude.example.com", claude)


def test_a_provider_cannot_fake_the_mark(envoy, upstreams):
    """An OpenAI answer carrying the internal header as if a translated try answered is passed as sent."""
    completion = chat(envoy.port, ROUTE_HOST, headers={"x-case": "to-claude", "x-test-response-header":
                                                        "x-llmc-translate: anthropic"})
    assert completion.choices[0].message.content == "hi"


def test_both_fail_and_the_last_tries_error_is_translated(envoy, upstreams, log_path):
    """OpenAI 503, then Gemini 429: the client gets Gemini's error in OpenAI's format with Gemini's
    status (the last try's answer, translated by its driver), never the first try's."""
    upstreams["openai.example.com"].fail = "503"
    upstreams["gemini.example.com"].fail = "429"
    err = status_error(chat, envoy.port, ROUTE_HOST, headers={"x-case": "to-gemini"})
    assert [h for h, _ in received(upstreams)] == ["openai.example.com", "gemini.example.com"]
    assert err.status_code == 429 and not any(k.startswith("x-llmc-") for k in err.response.headers)
    assert err.body == {"message": "test error 429", "type": "rate_limit_error", "param": None,
                        "code": "RESOURCE_EXHAUSTED"}


def test_a_tool_conversation_begun_on_openai_continues_on_gemini(envoy, upstreams):
    """The client's history holds OpenAI's tool calls (no thought signature): the Gemini backup gets
    Google's placeholder on the step's first call, which Gemini 3 requires (the double checks it), and
    answers the tool result."""
    upstreams["openai.example.com"].fail = "503"
    calls = [{"id": "call_Ab12", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    completion = chat(envoy.port, ROUTE_HOST, headers={"x-case": "to-gemini"}, tools=tools, messages=[
        {"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_Ab12", "content": "sunny"}])
    tries = received(upstreams)
    assert [h for h, _ in tries] == ["openai.example.com", "gemini.example.com"]
    assert upstreams["gemini.example.com"].problems == [[]]
    model_turn = tries[1][1].json()["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert completion.choices[0].message.content == "Hello from Gemini"


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_503_then_openai_answers_untranslated(envoy, upstreams, log_path, stream):
    """The first try's format is Gemini's (its path, its key, shaped by the downstream filter), the
    answering one OpenAI's: that try gets OpenAI's path and body, and its answer passes untranslated,
    streamed and not, with its usage recorded."""
    upstreams["gemini.example.com"].fail = "503"
    case = {"x-case": "gemini-to-openai"}
    if stream:
        out = chat_stream(envoy.port, ROUTE_HOST, headers=case)
        assert out.text and out.usage is not None and out.usage.total_tokens > 0
        assert not any(k.startswith("x-llmc-") for k in out.headers)
    else:
        out = chat(envoy.port, ROUTE_HOST, headers=case)
        assert out.choices[0].message.content == "hi" and out.model == "openai-model-2026"
    tries = received(upstreams)
    assert [h for h, _ in tries] == ["gemini.example.com", "openai.example.com"]
    assert upstreams["gemini.example.com"].problems == [[]]
    want = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    assert tries[0][1].path == f"/v1beta/models/gemini-x{want}"
    assert tries[1][1].path == "/v1/chat/completions" and tries[1][1].json()["model"] == "openai-model"
    assert tries[1][1].json()["messages"] == [{"role": "user", "content": "Please introduce yourself"}]
    assert_own("gemini.example.com", tries[0][1])
    assert_own("openai.example.com", tries[1][1])
    line = log_lines(log_path, "gemini-to-openai")[-1]
    assert line["provider"] == "p-openai" and line["first"] == "p-gemini" and str(line["tries"]) == "2"
    assert line["total"] not in (None, "-", "")


NO_MODEL = b'{"messages":[{"role":"user","content":"hi"}]}'


def test_a_backup_of_the_same_format_without_a_model_refuses_before_any_try(envoy, upstreams):
    """Anthropic with a model first, Anthropic without one the backup: a request without a model suits
    the first, not the backup, so it is refused (OpenAI-format 400) before any try, never sent to the
    backup as the client wrote it; with a model, the backup's try carries it."""
    upstreams["claude.example.com"].fail = "503"
    status, _, body = post(envoy.port, ROUTE_HOST, "/v1/chat/completions", NO_MODEL, {"x-case": "claude-to-open"})
    body = json.loads(body)
    assert status == 400 and body["error"]["param"] == "model", body
    assert received(upstreams) == []
    completion = chat(envoy.port, ROUTE_HOST, headers={"x-case": "claude-to-open"}, model="claude-y")
    tries = received(upstreams)
    assert [h for h, _ in tries] == ["claude.example.com", "claude-open.example.com"]
    assert upstreams["claude-open.example.com"].problems == [[]]
    assert tries[0][1].json()["model"] == "claude-x" and tries[1][1].json()["model"] == "claude-y"
    assert_own("claude-open.example.com", tries[1][1])
    assert completion.choices[0].message.content == "Hello from Claude"


def test_a_try_the_request_step_refuses_is_never_sent(objects, upstreams):
    """The upstream filter's guard, in real Envoy: a context without the downstream validation of the
    backup (``later`` removed, as a stale or hand-edited filter would be) still never sends the
    client's OpenAI body to the Anthropic backup: the try is answered locally, the client gets the
    OpenAI-format 400 a plain rule gives and the backup receives nothing."""
    doctored = _without_later(objects)
    assert doctored != objects, "no rule context had `later`"
    upstreams["claude.example.com"].fail = "503"
    with running_envoy(doctored, upstreams, every_patch=True) as proxy:
        status, _, body = post(proxy.port, ROUTE_HOST, "/v1/chat/completions", NO_MODEL, {"x-case": "claude-to-open"})
    body = json.loads(body)
    assert [h for h, _ in received(upstreams)] == ["claude.example.com"]
    assert status == 400 and body["error"]["param"] == "model" and body["error"]["type"] == "invalid_request_error", body


def _without_later(v):
    """A copy of ``v`` with every rule context's ``later`` removed (the contexts are JSON text in the
    EnvoyFilter patches)."""
    if isinstance(v, dict):
        return {k: _without_later(x) for k, x in v.items() if k != "later"}
    if isinstance(v, list):
        return [_without_later(x) for x in v]
    if isinstance(v, str) and '"later"' in v:
        return json.dumps(_without_later(json.loads(v)), separators=(",", ":"))
    return v
