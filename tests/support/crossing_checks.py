"""What must hold in every cell of the crossing matrix (``tests/test_crossings_e2e.py``), as checks
on one exchange: the request as the client sent it, its answer, and every request a provider double
received. The cells and their tables are in :mod:`tests.support.crossings`; this module says, for a
cell, where its requests may go (:func:`first_tries`, :func:`pick`), what llmc refuses itself
(:func:`refusal`), what each provider must receive (:func:`expected_pairs`, :func:`check_request`)
and what the client must get (:func:`check_answer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import openai

from compiler.protocols import CONFIG_FIELDS, DRIVERS
from compiler.telemetry import gen_ai_provider_name
from tests.support import crossings as X
from tests.support.anthropic import USAGE as ANTHROPIC_USAGE
from tests.support.gemini import USAGE as GEMINI_USAGE
from tests.support.upstream import USAGE as OPENAI_USAGE
from tests.support.upstream import Recorded


def backends(c: X.Cell) -> list[X.Provider]:
    return [X.PROVIDERS[n] for n in c.kind.providers(c.protocol)]


def reaches(c: X.Cell) -> bool:
    """Whether the cell's request reaches a provider: on a failover rule only when every provider of
    the rule could take it (the request is validated for every body format a try may speak, issue
    27); elsewhere when the provider picked can."""
    if c.kind.failover:
        return all(refusal(c, p) is None for p in backends(c))
    return any(refusal(c, p) is None for p in backends(c))


def failover_tries(c: X.Cell) -> list[str]:
    """The providers a failover cell's request reaches, in order (when its endpoint is served; the
    first priority's in the order of the draw when it has several)."""
    if not c.kind.failover or not reaches(c):
        return []
    levels = c.kind.priorities(c.protocol)
    # no failure: the first pick only; else every first choice fails (with each of its keys when it
    # retries with its next key: every failure of the matrix is in the rule's retryOn), then the
    # next priority's first
    if c.failure == "none":
        return levels[0][:1]
    return [*(n for n in levels[0] for _ in range(X.PROVIDERS[n].key_slots)), levels[1][0]]


@dataclass
class Exchange:
    """One cell's request as the client sent it, what it got, and what every provider received."""
    sent_headers: dict[str, str]
    sent_body: bytes
    status: int
    headers: dict[str, str]
    payload: bytes
    received: list[tuple[str, Recorded]]  # (provider name, request) in arrival order
    problems: dict[int, list[str]]  # id(request) → what a translated protocol's double found wrong with it
    stray: dict[str, list[bytes]]  # provider host → bytes read where a request should start
    log: dict | None = None  # the request's access-log line, in GenAI names (llmc meshconfig)


def pick(cell: X.Cell, x: Exchange) -> str | None:
    """The provider of the first try: the first to receive anything, or for a refused endpoint the one
    backend that lacks it."""
    names = cell.kind.providers(cell.protocol)
    if x.received:
        return x.received[0][0]
    refusing = [n for n in names if refusal(cell, X.PROVIDERS[n])]
    return refusing[0] if len(refusing) == 1 or len(refusing) == len(names) else None


def first_tries(cell: X.Cell) -> list[str]:
    """The providers a first try may go to: the first priority of a failover rule, else every backend."""
    return cell.kind.priorities(cell.protocol)[0]



def refusal(cell: X.Cell, p: X.Provider) -> int | None:
    """The status llmc answers itself, sending nothing, when the request would go to ``p``: 404 for an
    endpoint it does not serve; 400 for a body a translated provider cannot take as a chat completion
    (no ``messages``: an embeddings request to a provider without basePath, where every POST is chat)."""
    if p.serves(cell.endpoint) is None:
        return 404
    if p.format != "openai" and "messages" not in dict(cell.client_pairs()):
        return 400
    return None


def expected_status(cell: X.Cell, first: str | None) -> int:
    """What the client must get when ``first`` had the first try (None: nothing was sent)."""
    if first is None:
        return 404
    if refusal(cell, X.PROVIDERS[first]):
        return refusal(cell, X.PROVIDERS[first])
    if cell.failure == "none" or cell.kind.failover:
        return 200
    return {"503": 503, "reset": 503, "timeout": 504}[cell.failure]


def expected_pairs(cell: X.Cell, p: X.Provider) -> list:
    """The JSON members the provider must receive: the client's, with its model where llmc sets one
    (the configured model on chat; on the model-routed host the model that routed), one `model`."""
    model = p.model if p.serves(cell.endpoint) == "chat" else None
    if model is None and cell.kind.by_model:
        model = cell.routed_model
    pairs = cell.client_pairs()
    if model is None:
        return pairs
    out, seen = [], False
    for k, v in pairs:
        if k == "model":
            if not seen:
                out.append(("model", model))
                seen = True
            continue
        out.append((k, v))
    return out


def client_credentials(cell: X.Cell) -> list[tuple[str, str]]:
    headers = X.EXTRAS[cell.extra][0]
    return sorted((k, v) for k, v in headers.items() if k in X.CREDENTIAL_HEADERS)


def check_request(cell: X.Cell, p: X.Provider, rec: Recorded, problems: list[str] | None) -> None:
    where = f"{p.name} received"
    # framing: exactly Content-Length bytes, nothing more behind them
    assert rec.declared is not None and rec.declared == len(rec.body), (where, rec.declared, len(rec.body))
    assert rec.extra == b"", (where, "bytes beyond Content-Length", rec.extra[:200])
    # internal headers
    assert not [k for k, _ in rec.raw_headers if k.startswith("x-llmc-")], (where, [
        h for h in rec.raw_headers if h[0].startswith("x-llmc-")])
    # credentials
    present = sorted((k, v) for k, v in rec.raw_headers if k in X.CREDENTIAL_HEADERS)
    own_client_key = p.key is None and not cell.kind.failover  # README "Credentials"
    if p.credential is not None:  # one of the provider's keys (one of several: multikey), once
        assert len(present) == 1 and present[0] in p.credentials, (where, present)
    elif own_client_key:
        assert present == client_credentials(cell), (where, present)
    else:
        assert present == [], (where, present)
    text = json.dumps(rec.raw_headers) + rec.body.decode("utf-8", "replace")
    for other, keys in X.KEYS.items():
        assert other == p.name or not any(k in text for k in keys), (where, f"the key of {other}")
    if not own_client_key:
        assert X.APP_KEY not in text and X.APP_XKEY not in text, (where, "the client's credential")
    if p.keys:  # a beta feature, a billing organization or project: the platform's, with its key
        kept = {"anthropic": ("anthropic-beta",), "openai": ("openai-organization", "openai-project")}
        for name in kept.get(p.format if p.double != "azure" else "azure", ()):
            assert name not in rec.headers, (where, f"the client's {name}")
    # endpoint, host, body
    assert rec.path == p.path(cell.endpoint, cell.streams), (where, rec.path)
    assert rec.headers.get("host") == p.host, (where, rec.headers.get("host"))
    assert rec.headers.get("accept-encoding") == "identity", (where, rec.headers.get("accept-encoding"))
    if p.format != "openai":  # the double checked the API's schema; the model is in the path or the body
        assert problems == [], (where, problems)
        assert p.model in rec.path or json.loads(rec.body)["model"] == p.model
    else:
        assert json.loads(rec.body, object_pairs_hook=list) == expected_pairs(cell, p), (where, rec.body)


def stream_events(payload: bytes) -> list[str]:
    return [e.removeprefix("data: ") for e in payload.decode().split("\n\n") if e.startswith("data: ")]


def check_answer(cell: X.Cell, x: Exchange) -> None:
    assert x.status == expected_status(cell, pick(cell, x)), (x.status, x.payload[:300])
    assert not [k for k in x.headers if k.startswith("x-llmc-")], x.headers
    served = X.PROVIDERS[pick(cell, x)].serves(cell.endpoint) if x.status < 300 else None
    if served == "chat" and cell.streams:  # OpenAI's chunks, the usage chunk last, then [DONE]
        assert x.headers.get("content-type", "").startswith("text/event-stream"), (x.headers, x.payload[:300])
        *events, done = stream_events(x.payload)
        assert done == "[DONE]" and events, x.payload[-300:]
        # Azure's first chunk (prompt_filter_results: empty object and model) passes as Azure sent it
        chunks = [openai.types.chat.ChatCompletionChunk.model_validate_json(e) for e in events
                  if json.loads(e).get("object") != ""]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None, events[-1]
        return
    assert x.headers.get("content-type", "").startswith("application/json"), (x.headers, x.payload[:300])
    body = json.loads(x.payload)
    if x.status < 300:
        assert "error" not in body, body
        kind = openai.types.chat.ChatCompletion if served == "chat" else openai.types.CreateEmbeddingResponse
        kind.model_validate(body)
    else:
        err = body.get("error")
        assert isinstance(err, dict) and set(err) >= {"message", "type", "param", "code"}, body
        assert isinstance(err["message"], str) and isinstance(err["type"], str), body


def gen_ai_provider(p: X.Provider) -> str:
    """The ``gen_ai.provider.name`` the compiler gives the matrix's provider (compiler/telemetry.py)."""
    (field,) = p.config
    return gen_ai_provider_name(DRIVERS[CONFIG_FIELDS[field]].gen_ai_name, p.host, f"p-{p.name}")


def expected_usage(p: X.Provider, served: str) -> dict[str, object]:
    """The GenAI usage fields the access log must carry for an answer of ``p``'s double."""
    if served == "embeddings":  # the OpenAI double's embeddings usage: prompt tokens only
        return {"input_tokens": 5, "output_tokens": None, "cache_read.input_tokens": None,
                "cache_creation.input_tokens": None, "reasoning.output_tokens": None, "finish_reasons": None}
    if p.format == "anthropic":  # input includes the cache reads and writes (the convention's rule)
        u = ANTHROPIC_USAGE
        return {"input_tokens": u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"],
                "output_tokens": u["output_tokens"], "cache_read.input_tokens": u["cache_read_input_tokens"],
                "cache_creation.input_tokens": u["cache_creation_input_tokens"], "reasoning.output_tokens": None,
                "finish_reasons": ["end_turn"]}
    if p.format == "gemini":  # promptTokenCount includes the cached tokens; the thinking ones are output
        g = GEMINI_USAGE
        return {"input_tokens": g["promptTokenCount"], "output_tokens": g["candidatesTokenCount"] + g["thoughtsTokenCount"],
                "cache_read.input_tokens": g["cachedContentTokenCount"], "cache_creation.input_tokens": None,
                "reasoning.output_tokens": g["thoughtsTokenCount"], "finish_reasons": ["STOP"]}
    return {"input_tokens": OPENAI_USAGE["prompt_tokens"], "output_tokens": OPENAI_USAGE["completion_tokens"],
            "cache_read.input_tokens": None, "cache_creation.input_tokens": None, "reasoning.output_tokens": None,
            "finish_reasons": ["stop"]}


def check_telemetry(cell: X.Cell, x: Exchange) -> None:
    """The access log line in GenAI names (``llmc meshconfig``): the provider that answered, the
    operation of the endpoint, the double's usage by type, finish reasons, and time to first chunk
    for a stream; llmc's own and the providers' errors carry no usage."""
    log = x.log
    assert log is not None and log["response_code"] == x.status, (log, x.status)
    usage = {k.removeprefix("gen_ai.usage.").removeprefix("gen_ai.response."): v for k, v in log.items()
             if k.startswith(("gen_ai.usage.", "gen_ai.response.finish"))}
    if x.status >= 300:
        assert all(v is None for v in usage.values()), log
        assert log["gen_ai.response.time_to_first_chunk"] is None, log
        if cell.limit == "budget":
            check_cost(None, log)
        return
    answered = X.PROVIDERS[x.received[-1][0]]  # the last try answered
    served = answered.serves(cell.endpoint)
    assert log["llm_provider"] == f"p-{answered.name}", log
    assert log["gen_ai.provider.name"] == gen_ai_provider(answered), log
    assert log["gen_ai.operation.name"] == served, log
    assert {k: usage[k] for k in expected_usage(answered, served)} == expected_usage(answered, served), log
    first = log["gen_ai.response.time_to_first_chunk"]
    if cell.streams and served == "chat":
        assert first is not None and 0 <= float(first) * 1000 <= int(log["duration_ms"]) + 1, log
    else:
        assert first is None, log
    if cell.limit == "budget":
        check_cost(answered, log)


def check_cost(answered: X.Provider | None, log: dict) -> None:
    """The cost counter (issue 34; a money cell, whose providers have prices): the answer's usage as
    the access log has it at the answering provider's price, in micro units (the matrix's prices are
    whole units per 1M tokens: exact), labelled with that provider; an error adds 0 to ``unknown``."""
    tokens = log["gen_ai.usage.input_tokens"], log["gen_ai.usage.output_tokens"]
    if answered is None or tokens[0] is None:
        assert int(log["cost"]) == 0 and log["cost/llm_provider"] == "unknown", log
        return
    prompt, completion = (int(float(t)) if t is not None else 0 for t in tokens)
    assert int(log["cost"]) == prompt * answered.price["prompt"] + completion * answered.price["completion"], log
    assert log["cost/llm_provider"] == f"p-{answered.name}", log


def check_tries(cell: X.Cell, x: Exchange) -> None:
    """Who received what: nothing for a refused endpoint; one request without a failure; on failover
    the first provider, then the next priority; and every request shaped for its receiver."""
    assert not x.stray, f"bytes read as the start of a request (HTTP desync): {x.stray}"
    names = cell.kind.providers(cell.protocol)
    got = [n for n, _ in x.received]
    if pick(cell, x) is None or refusal(cell, X.PROVIDERS[pick(cell, x)]):
        assert got == [], got
        return
    if cell.failure == "none":
        assert len(got) == 1 and got[0] in first_tries(cell), got
    elif cell.kind.failover:
        assert sorted(got) == sorted(failover_tries(cell)), got
        first = sum(X.PROVIDERS[n].key_slots for n in first_tries(cell))  # a try per key (keyretry)
        assert set(got[:first]) == set(first_tries(cell)), ("priorities in order", got)
    else:
        assert got and set(got) <= set(names), got
    for name, rec in x.received:
        check_request(cell, X.PROVIDERS[name], rec, x.problems.get(id(rec)))
    # a key that failed is never sent twice in one request (several keys: each try its own)
    for name in set(got):
        creds = [v for n, rec in x.received if n == name for k, v in rec.raw_headers if k in X.CREDENTIAL_HEADERS]
        if len(X.PROVIDERS[name].keys) > 1:
            assert len(creds) == len(set(creds)), (name, "a key sent twice", len(creds))
