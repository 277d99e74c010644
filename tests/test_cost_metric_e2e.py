"""The cost counter ``istio_llm_cost_total`` (issue 34) in real Envoy: for OpenAI, Anthropic and Gemini
answers, streamed and not, the counter's value is the arithmetic of the double's usage (cache reads
included) and the configured prices, with the provider and model labels of the answer; an unpriced
provider's answers add 0 to the ``unknown`` series only.

istio.stats is not in upstream Envoy, so — as tests/test_observability_e2e.py does for the other
metrics — the counter's value and labels, taken from the EnvoyFilter ``render --telemetry`` emits,
are put through Envoy's CEL formatter as access-log fields, against the same dynamic metadata.
"""

from __future__ import annotations

import dataclasses
import json
import time

import openai
import pytest

from compiler.telemetry import COST_DEFINITION
from tests.support import crossings as X
from tests.support.anthropic import USAGE as ANTHROPIC_USAGE
from tests.support.anthropic import AnthropicUpstream
from tests.support.envoy_harness import Envoy, access_log, build_bootstrap
from tests.support.gemini import COMPLETION as GEMINI_COMPLETION
from tests.support.gemini import PROMPT as GEMINI_PROMPT
from tests.support.gemini import USAGE as GEMINI_USAGE
from tests.support.gemini import GeminiUpstream
from tests.support.mesh import llmc_render
from tests.support.upstream import USAGE as OPENAI_USAGE
from tests.support.upstream import Upstream

pytestmark = pytest.mark.envoy

#: the providers: OpenAI, Anthropic and Gemini priced per model (a dearer "*" price that must not
#: apply: the answering model's price does), and an unpriced OpenAI-compatible one
DEAR = {"prompt": 1000, "completion": 1000}
OPENAI = dataclasses.replace(X.PROTOCOLS["openai"], base_path=None)
#: Anthropic's and Gemini's doubles report cache reads (5 of their prompt tokens): a cachedPrompt
PRICES = {"openai": {"prompt": 3, "completion": 5}, "anthropic": {"prompt": 19, "completion": 23, "cachedPrompt": 2},
          "gemini": {"prompt": 43, "completion": 47, "cachedPrompt": 11}}
PROVIDERS = {"openai": OPENAI, "anthropic": X.PROTOCOLS["anthropic"], "gemini": X.PROTOCOLS["gemini"],
             "free": dataclasses.replace(OPENAI, name="free")}
#: (prompt, completion) tokens as llmc records them from each double: the conventions' input tokens
#: include Anthropic's cache reads and writes; Gemini's thinking tokens are output tokens
USAGE = {"openai": (OPENAI_USAGE["prompt_tokens"], OPENAI_USAGE["completion_tokens"]),
         "anthropic": (ANTHROPIC_USAGE["input_tokens"] + ANTHROPIC_USAGE["cache_read_input_tokens"]
                       + ANTHROPIC_USAGE["cache_creation_input_tokens"], ANTHROPIC_USAGE["output_tokens"]),
         "gemini": (GEMINI_PROMPT, GEMINI_COMPLETION)}
#: of which read from the provider's cache
CACHE_READS = {"openai": 0, "anthropic": ANTHROPIC_USAGE["cache_read_input_tokens"],
               "gemini": GEMINI_USAGE["cachedContentTokenCount"]}


def manifest() -> str:
    docs = []
    for name, p in PROVIDERS.items():
        spec = p.spec()
        if name in PRICES:
            spec["prices"] = [{"model": p.model, **PRICES[name]}, {"model": "*", **DEAR}]
        else:
            spec.pop("prices")
        docs.append({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
                     "metadata": {"name": f"p-{p.name}", "namespace": "default"}, "spec": spec})
    return "---\n".join(json.dumps(d) + "\n" for d in docs)


def cost_fields(objects: list[dict]) -> dict[str, str]:
    """The cost counter's value (``cost``) and labels (``cost/<label>``) as CEL access-log fields."""
    fields = {"provider": "%DYNAMIC_METADATA(llmc:provider)%", "cache_read": "%DYNAMIC_METADATA(llmc:cache_read_tokens)%"}
    for o in objects:
        for patch in o["spec"].get("configPatches", []) if o["kind"] == "EnvoyFilter" else []:
            cfg = patch["patch"]["value"].get("typed_config", {})
            for d in cfg.get("definitions", []):
                if d["name"] == COST_DEFINITION:
                    fields["cost"] = f"%CEL({d['value']})%"
            for m in cfg.get("metrics", []):
                if m["name"] == COST_DEFINITION:
                    fields.update({f"cost/{k}": f"%CEL({v})%" for k, v in m["dimensions"].items()})
    assert "cost" in fields and "cost/llm_provider" in fields, fields
    return fields


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    d = tmp_path_factory.mktemp("cost")
    (d / "in.yaml").write_text(manifest())
    objects = llmc_render("-f", str(d / "in.yaml"), "--istio-version", "1.31")
    fields = cost_fields(llmc_render("-f", str(d / "in.yaml"), "--istio-version", "1.31", "--telemetry"))
    ups = {}
    for p in PROVIDERS.values():
        double = {"anthropic": AnthropicUpstream, "gemini": GeminiUpstream}.get(p.double, Upstream)
        ups[p.host] = double(p.host, sse_pause=0.05)
    layout = build_bootstrap(objects, {h: u.port for h, u in ups.items()}, None,
                             access_logs=[access_log(str(d / "cost.log"), fields)])
    assert layout.unmatched == []
    envoy = Envoy(layout.bootstrap)
    yield envoy, d / "cost.log"
    envoy.stop()
    for u in ups.values():
        u.stop()


def lines(path) -> list[str]:
    text = path.read_text() if path.exists() else ""
    return text[:text.rfind("\n") + 1].splitlines()


def ask(proxy, name: str, stream: bool) -> dict:
    """A chat request to the provider's host through the sidecar; the access-log line it produced."""
    envoy, log = proxy
    before = len(lines(log))
    with openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key=X.APP_KEY, max_retries=0, timeout=30,
                       default_headers={"Host": PROVIDERS[name].host}) as sdk:
        kwargs: dict = {"model": "any", "messages": [{"role": "user", "content": "hi"}]}
        if stream:  # an OpenAI stream carries usage when asked (translated streams always do)
            chunks = list(sdk.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
            assert any(c.usage for c in chunks)
        else:
            assert sdk.chat.completions.create(**kwargs).usage is not None
    deadline = time.monotonic() + 20  # Envoy writes the line when the stream ends: awaited, not timed
    while len(lines(log)) <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    return json.loads(lines(log)[before])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("name", list(PRICES))
def test_the_counter_adds_the_answers_price(proxy, name, stream):
    line = ask(proxy, name, stream)
    assert int(line.get("cache_read") or 0) == CACHE_READS[name], line
    prompt, completion = USAGE[name]
    price = PRICES[name]
    # prices are whole units per 1M tokens and the counter counts micro units: exact, no rounding;
    # cache reads (part of the prompt tokens) at the cachedPrompt price
    cached = CACHE_READS[name] * (price["prompt"] - price.get("cachedPrompt", price["prompt"]))
    assert int(line["cost"]) == prompt * price["prompt"] + completion * price["completion"] - cached, line
    assert line["cost/llm_provider"] == f"p-{name}" and line["provider"] == f"p-{name}", line
    assert line["cost/gen_ai_provider_name"] != "unknown" and line["cost/gen_ai_operation_name"] == "chat", line
    # the model that answered (the OpenAI double reports a dated snapshot: its name's price applies)
    assert line["cost/gen_ai_response_model"].startswith(PROVIDERS[name].model), line


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_unpriced_provider_records_no_cost(proxy, stream):
    line = ask(proxy, "free", stream)
    assert line["provider"] == "p-free" and int(line["cost"]) == 0, line
    labels = {k: v for k, v in line.items() if k.startswith("cost/") and k.split("/")[1].startswith(("gen_ai", "llm_p"))}
    assert labels and set(labels.values()) == {"unknown"}, line
