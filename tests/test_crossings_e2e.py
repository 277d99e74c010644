"""Where features cross, every promise holds: the crossing matrix of issue 24 through a real Envoy.

The cells come from ``tests/support/crossings.py`` (rules × protocols × endpoints × client extras ×
failure of the first try × target (sidecars, or a waypoint in ambient mode): all-pairs, and every
rule × protocol with every endpoint and every failure; combinations the compiler refuses assert its
diagnostic instead). One input holds every rule of every cell and one Envoy (laid out as istiod 1.31
would, or 1.30 on the pinned Envoy 1.38) serves them all — for ambient cells, the ambient rendering
of their rules on a waypoint laid out as istiod lays it out (tests/support/waypoint_harness.py);
each cell sends one request
with the official ``openai`` client and checks the same invariants, for every request any provider
double received and for what the client got (:func:`check_request`, :func:`check_answer`):

* the only credential header is the receiving provider's, with its key, once; no other provider's
  key and no client credential anywhere — except that a keyless provider on a rule without failover
  gets the client's own credentials as the client sent them (README, "Credentials"); on a failover
  rule no try ever gets them;
* the body is exactly ``Content-Length`` long: nothing missing, nothing more waiting behind it, and
  no stray bytes read as a request on a kept connection (an HTTP desync);
* no ``x-llmc-*`` header reaches a provider, whoever set it;
* the endpoint is one the provider serves, or the client gets a 404 and nothing is sent (a
  provider without ``basePath`` takes every POST as a chat completion: a body that is none for a
  translated provider gets llmc's 400, nothing sent);
* path, host, model and body are the receiving provider's (the Anthropic and Gemini doubles check their
  APIs' documented schemas); ``accept-encoding: identity`` (usage is read from the answer);
* the client gets OpenAI's format: a JSON error object on errors, never a 2xx with an error body,
  no internal header;
* a limited cell (a token limit, issue 30, or a money budget, issue 31) changes none of the above,
  and its rule's bucket in the rate-limit service (the double, over a real Redis, loaded with the
  ConfigMap llmc emitted) is charged exactly what the answer's usage says — at the price of the
  provider that answered, for a budget — once, whatever number of tries, or ``request.size / 4``
  for a 2xx without usage, 0 for an error; a request llmc answers itself never calls the service
  (:func:`check_charge`).

Failover cells need Envoy 1.39+ (``python -m tests.envoy_versions 1.39.3 1.40.0`` runs them; a skip
there fails). ``test_explain_predicts_the_cell`` runs every cell offline with ``llmc explain`` and
compares the predicted upstream request with what the real Envoy sent. Cells that fail because of a
known defect are strict-xfail, keyed in ``KNOWN`` (issue 24 item numbers): remove a line when its
fix lands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx2 as httpx
import openai
import pytest

from compiler.options import parse_options
from compiler.pipeline import compile_text
from compiler.resolve import Options
from tests.support import crossings as X
from tests.support.anthropic import AnthropicUpstream
from tests.support.azure import AzureUpstream
from tests.support.crossing_checks import (
    Exchange,
    check_answer,
    check_telemetry,
    check_tries,
    first_tries,
    pick,
    reaches,
    stream_events,
)
from tests.support.envoy_harness import Envoy, access_log, build_bootstrap, envoy_minor
from tests.support.gemini import GeminiUpstream
from tests.support.mesh import llmc_render
from tests.support.ratelimit import RateLimitDouble, RedisServer, configmap_files, counter, rls_cluster, serving
from tests.support.upstream import Recorded, Upstream
from tests.support.waypoint_harness import Waypoint, build_waypoint_bootstrap

pytestmark = pytest.mark.envoy

CELLS = X.cells()
FAILOVER_ENVOY = (1, 39)


#: Known defects → the cells they break (strict: when a fix lands the cell passes, XPASS fails the
#: run, and the line goes). "issue 24 item N" are the issue's; "new:" ones were found by the matrix.
#: Each predicate says where the defect shows when the others are fixed. Empty: every cell holds. The
#: form (e.g. the Azure finding, fixed on main in 4d72961):
#:   ("new: Azure's basePath endpoints are sent without ?api-version",
#:    lambda c: c.endpoint == "embeddings" and "azure" in (failover_tries(c) if c.kind.failover else
#:                                                         c.kind.providers(c.protocol))),
KNOWN: list[tuple[str, Callable[[X.Cell], bool]]] = []


def marks(cell: X.Cell) -> list:
    reasons = [reason for reason, applies in KNOWN if applies(cell)]
    return [pytest.mark.xfail(strict=True, reason="; ".join(reasons))] if reasons else []


TRAFFIC = [c for c in CELLS if not c.rejected]


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    path = tmp_path_factory.mktemp("crossings") / "crossings.yaml"
    path.write_text(X.manifest(TRAFFIC))
    # a generous timeout: the cells count the service's calls, and a starved machine's Python
    # double must not have a call cancelled before it counts it (tests/test_token_limits_e2e.py)
    limits = (["--rate-limit-service", X.RATE_LIMIT_SERVICE, "--rate-limit-timeout", "10s"]
              if X.limited(TRAFFIC) else [])
    return llmc_render("-f", str(path), "--istio-version", "1.31", *limits)


@pytest.fixture(scope="module")
def rls(objects):
    """The rate-limit service the limited cells' rules call: the double, loaded with llmc's ConfigMap."""
    redis = RedisServer()
    double = RateLimitDouble(redis.client, configmap_files(objects))
    with serving(double) as port:
        double.port = port
        double.redis_server = redis  # type: ignore[attr-defined]
        yield double
    redis.stop()


AMBIENT = [c for c in TRAFFIC if c.target == "ambient"]


def waypoint_of(cell: X.Cell) -> str:
    """The waypoint serving an ambient cell. A waypoint's Lua is capped (TrafficExtension: 65,536
    characters; docs/ambient.md, "Size"), and the bundle with both translators (Anthropic's and
    Gemini's, one TrafficExtension since the bundle is minified) leaves room for about 20 providers'
    route table: the cells whose rule uses a translated provider get a waypoint of their own (as
    docs/ambient.md advises: split the providers over several waypoints)."""
    translated = any(X.PROVIDERS[n].format != "openai" for n in cell.kind.providers(cell.protocol))
    return "translated" if translated else "openai"


AMBIENT_GROUPS = {name: [c for c in AMBIENT if waypoint_of(c) == name] for name in ("openai", "translated")}


def ambient_manifest(group: str) -> str:
    return X.manifest(AMBIENT_GROUPS[group])


@pytest.fixture(scope="module")
def ambient_objects(tmp_path_factory):
    """The rules of the ambient cells, rendered for their waypoints (one rendering per waypoint)."""
    out = {}
    for group in AMBIENT_GROUPS:
        path = tmp_path_factory.mktemp("crossings") / f"ambient-{group}.yaml"
        path.write_text(ambient_manifest(group))
        out[group] = llmc_render("-f", str(path), "--istio-version", "1.31", *X.TARGETS["ambient"])
    return out


@pytest.fixture(scope="module")
def upstreams():
    ups: dict[str, Upstream | AnthropicUpstream | GeminiUpstream] = {}
    for p in X.PROVIDERS.values():
        if p.double == "anthropic":
            ups[p.host] = AnthropicUpstream(p.host, sse_pause=0.05)
        elif p.double == "gemini":
            ups[p.host] = GeminiUpstream(p.host, sse_pause=0.05)
        elif p.double == "azure":
            ups[p.host] = AzureUpstream(p.host, ("dep-x",), sse_pause=0.05)
        else:
            ups[p.host] = Upstream(p.host, sse_pause=0.05)
        ups[p.host].hang = X.HANG
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def access_log_path(tmp_path_factory):
    return tmp_path_factory.mktemp("crossings-log") / "access.log"


@pytest.fixture(scope="module")
def cost_fields(tmp_path_factory):
    """The cost counter of ``render --telemetry`` (issue 34) for the matrix's priced providers, as CEL
    access-log fields (``cost``, ``cost/<label>``: tests/test_cost_metric_e2e.py)."""
    from tests.test_cost_metric_e2e import cost_fields as fields

    path = tmp_path_factory.mktemp("crossings-telemetry") / "crossings.yaml"
    path.write_text(X.manifest(TRAFFIC))
    limits = ["--rate-limit-service", X.RATE_LIMIT_SERVICE] if X.limited(TRAFFIC) else []
    return fields(llmc_render("-f", str(path), "--istio-version", "1.31", "--telemetry", *limits))


@pytest.fixture(scope="module")
def envoy(objects, upstreams, rls, access_log_path, cost_fields):
    from tests.test_observability_e2e import meshconfig_labels

    istio = [o for o in objects if o["kind"] != "ConfigMap"]  # the ConfigMap is the rate-limit service's
    layout = build_bootstrap(istio, {h: u.port for h, u in upstreams.items()}, None,
                             extra_clusters=[rls_cluster(rls.port)],
                             access_logs=[access_log(str(access_log_path), {**meshconfig_labels(), **cost_fields})])
    assert layout.unmatched == []
    assert (layout.skipped == []) is (envoy_minor() >= FAILOVER_ENVOY)  # failover patches: 1.31+ proxies only
    proxy = Envoy(layout.bootstrap)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def waypoint_log_path(tmp_path_factory):
    return {group: tmp_path_factory.mktemp("crossings-waypoint-log") / f"{group}.log" for group in AMBIENT_GROUPS}


@pytest.fixture(scope="module")
def waypoint(ambient_objects, upstreams, waypoint_log_path):
    from tests.test_observability_e2e import meshconfig_labels

    hosts = {host: "default" for _, host, _ in X.ROUTES}  # the routes' hosts: Services enrolled in the waypoint
    proxies = {}
    for group, objects in ambient_objects.items():
        layout = build_waypoint_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None, services=hosts,
                                          access_logs=[access_log(str(waypoint_log_path[group]), meshconfig_labels())])
        proxies[group] = Waypoint(layout.bootstrap)
    yield proxies
    for proxy in proxies.values():
        proxy.stop()


def port_of(cell: X.Cell, request) -> int:
    """The listener the cell's request goes to: the sidecar's, or the waypoint's chain for its host."""
    if cell.target == "ambient":
        return request.getfixturevalue("waypoint")[waypoint_of(cell)].ports[cell.host]
    return request.getfixturevalue("envoy").port


RESULTS: dict[str, list[Exchange]] = {}
HOST_PROVIDER = {p.host: p.name for p in X.PROVIDERS.values()}


def send(port: int, cell: X.Cell) -> tuple[dict, int, dict, bytes]:
    """The cell's request with the official SDK (its own Authorization left out unless the cell adds
    one); returns the headers it really sent (lower-case), the status, headers and raw body."""
    sent: dict[str, str] = {}

    def capture(request: httpx.Request) -> None:
        sent.update({k.lower(): v for k, v in request.headers.items()})

    headers: dict = {"content-type": "application/json", **cell.headers()}
    headers.setdefault("authorization", openai.Omit())
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}", api_key=X.APP_KEY, max_retries=0, timeout=30,
                       default_headers={"Host": cell.host},
                       http_client=httpx.Client(event_hooks={"request": [capture]})) as sdk:
        try:
            resp = sdk.post(cell.path, cast_to=httpx.Response, content=cell.body(), options={"headers": headers})
        except openai.APIStatusError as err:
            resp = err.response
        return sent, resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def log_lines(path) -> list[str]:
    text = path.read_text() if path.exists() else ""
    return text[:text.rfind("\n") + 1].splitlines()  # complete lines only: Envoy may be mid-write


def next_log_line(path, previous: int, timeout: float = 20.0) -> dict:
    """The access-log line after the first ``previous`` (Envoy writes it when the stream ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(path)
        if len(lines) > previous:
            return json.loads(lines[previous])
        time.sleep(0.02)
    raise AssertionError(f"no access-log line for the request in {path}")


def exchange(cell: X.Cell, port: int, upstreams, log_path) -> Exchange:
    """One request of the cell: the first tries' providers fail as the cell says."""
    for u in upstreams.values():
        u.clear()
        u.server.stray.clear()
    for name in first_tries(cell):
        upstreams[X.PROVIDERS[name].host].fail = X.FAILURES[cell.failure]
    logged = len(log_lines(log_path))
    sent, status, headers, payload = send(port, cell)
    received = sorted(((HOST_PROVIDER[h], r) for h, u in upstreams.items() for r in list(u.requests)),
                      key=lambda item: item[1].order)
    problems = {id(r): p for u in upstreams.values() if isinstance(u, AnthropicUpstream | GeminiUpstream)
                for r, p in zip(u.requests, u.problems, strict=True)}
    stray = {h: list(u.server.stray) for h, u in upstreams.items() if u.server.stray}
    return Exchange(sent, cell.body(), status, headers, payload, received, problems, stray,
                    next_log_line(log_path, logged))


#: a weighted rule's cell is sent until each backend had a first try (50/50: 24 sends miss one
#: backend with probability 2**-23), so its outcome does not depend on the draw
MAX_SENDS = 24


def exchanges(cell: X.Cell, request) -> list[Exchange]:
    """The cell's exchanges (several for a weighted rule), run once for both tests of the cell."""
    if cell.kind.failover and envoy_minor() < FAILOVER_ENVOY:
        pytest.skip("failover needs Envoy 1.39+; run `python -m tests.envoy_versions 1.39.3`")
    if cell.id not in RESULTS:
        port, upstreams = port_of(cell, request), request.getfixturevalue("upstreams")
        log_path = (request.getfixturevalue("waypoint_log_path")[waypoint_of(cell)] if cell.target == "ambient"
                    else request.getfixturevalue("access_log_path"))
        firsts, done = first_tries(cell), []
        while not done or (len(firsts) > 1 and reaches(cell) and not {pick(cell, x) for x in done} >= set(firsts)
                           and len(done) < MAX_SENDS):
            done.append(exchange(cell, port, upstreams, log_path))
        RESULTS[cell.id] = done
        if cell.limit_id is not None:
            CHARGES[cell.id] = charged(cell, done, request.getfixturevalue("rls"))
    return RESULTS[cell.id]


CHARGES: dict[str, tuple[int, int, int, int]] = {}  # cell id → (calls, expected calls, charge, expected)


def answer_usage(x: Exchange) -> dict:
    """The usage the client got: a JSON answer's, or a stream's (the event with a usage object)."""
    if x.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(e) for e in stream_events(x.payload) if e != "[DONE]"]
        return next((e["usage"] for e in reversed(events) if e.get("usage")), {})
    return (json.loads(x.payload) if x.payload else {}).get("usage") or {}


def expected_charge(cell: X.Cell, x: Exchange) -> int:
    """What the answer costs: the usage the client got, prompt + completion tokens (a token limit,
    cost {total: 1}) or priced at the provider that answered — the last to receive the request —
    (a money budget, micro units: the matrix's prices are whole units per 1M tokens); a 2xx without
    both: the request's size / 4 (Envoy's ``request.size``: the body as the downstream filter shaped
    it, which the first try received as it was) tokens, at the prompt price for a budget; an error: 0."""
    if x.status >= 400:
        return 0
    price = X.PROVIDERS[x.received[-1][0]].price if cell.limit == "budget" else {"prompt": 1, "completion": 1}
    usage = answer_usage(x)
    if isinstance(usage.get("prompt_tokens"), int) and isinstance(usage.get("completion_tokens"), int):
        return usage["prompt_tokens"] * price["prompt"] + usage["completion_tokens"] * price["completion"]
    size = len(x.received[0][1].body) if x.received else len(x.sent_body)
    return size // 4 * price["prompt"]


def charged(cell: X.Cell, xs: list[Exchange], rls: RateLimitDouble) -> tuple[int, int, int, int]:
    """(calls naming the cell's limit, calls expected, its counter, the charge expected), once every
    expected call arrived: a check and a charge per request the route forwarded, none for a request
    llmc answered itself (the charge is sent after the client has its answer: awaited, not timed)."""
    import time

    assert cell.limit_id is not None
    want_calls = sum(2 for x in xs if x.received or x.status not in (400, 404))
    want = sum(expected_charge(cell, x) for x in xs)

    def calls() -> int:
        return sum(1 for r in list(rls.requests) for d in r.descriptors
                   if any(e.key == "llmc_limit" and e.value == cell.limit_id for e in d.entries))

    def charged_now() -> int:
        return rls.redis_server.counters().get(counter(cell.limit_id), 0)  # type: ignore[attr-defined]

    # await the calls and the charge (a call is logged once counted; a wrong charge still fails, once waited)
    deadline = time.monotonic() + 60  # generous: only a wrong charge waits it out
    while (calls() < want_calls or charged_now() != want) and time.monotonic() < deadline:
        time.sleep(0.02)
    return calls(), want_calls, charged_now(), want


def check_charge(cell: X.Cell) -> None:
    calls, want_calls, got, want = CHARGES[cell.id]
    assert calls == want_calls, f"{calls} calls to the rate-limit service, expected {want_calls}"
    assert got == want, f"charged {got}, expected {want}"


# ------------------------------------------------------------------------------------------------
# The cells
# ------------------------------------------------------------------------------------------------

def params(cells):
    return [pytest.param(c, id=c.id, marks=marks(c)) for c in cells]


@pytest.mark.parametrize("cell", params(CELLS))
def test_crossing(cell: X.Cell, request):
    if cell.rejected:
        code, field = cell.rejected
        service = X.RATE_LIMIT_SERVICE if X.LIMITS[cell.limit] is not None else None
        opts, _ = parse_options(target=cell.target, istio_version="1.31", rate_limit_service=service)
        result = compile_text(X.rejected_manifest(cell), opts, "crossing.yaml")
        errors = [(d.code, d.path) for d in result.diagnostics.items if d.severity == "error"]
        assert errors == [(code, f"spec.rules[0].{field}")], errors
        return
    xs = exchanges(cell, request)
    assert {pick(cell, x) for x in xs} >= set(first_tries(cell)) or not reaches(cell), "a backend had no first try"
    for x in xs:
        check_answer(cell, x)
        check_tries(cell, x)
        check_telemetry(cell, x)
    if cell.limit_id is not None:
        check_charge(cell)


def test_the_matrix_input_draws_exactly_the_expected_warnings():
    """The one input of every traffic cell compiles, with the warnings ``WARNED`` lists at their rules."""
    service = ("llmc-system", "ratelimit", 8081) if X.limited(TRAFFIC) else None  # X.RATE_LIMIT_SERVICE
    result = compile_text(X.manifest(TRAFFIC), Options(rate_limit_service=service), "crossings.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.items if d.severity == "error"]
    codes = {code for code, _ in X.WARNED.values()}
    got = {(d.object, d.code, d.path) for d in result.diagnostics.items if d.code in codes}
    want = set()
    for route, rules in X.route_rules(TRAFFIC).items():
        for i, rule in enumerate(rules):
            if rule[:2] in X.WARNED:
                code, field = X.WARNED[rule[:2]]
                want.add((f"LLMRoute default/{route}", code, f"spec.rules[{i}].{field}"))
    assert got == want


def test_the_matrix_covers_every_pair_and_triple():
    """All-pairs, and every combination of each of ``TRIPLES``, meet in a traffic cell, unless the
    compiler refuses the (rule, protocol) (then its rejected cell covers it) or the matrix does not run
    it (``X.NOT_RUN``)."""
    import itertools

    dims = {k: list(v) for k, v in X.DIMENSIONS.items()}
    rows = [vars(c) for c in TRAFFIC]
    for group in [*itertools.combinations(dims, 2), *X.TRIPLES]:
        for values in itertools.product(*(dims[d] for d in group)):
            combo = dict(zip(group, values, strict=True))
            if X.refused(combo) or X.not_run(combo):
                continue
            assert any(all(r[d] == v for d, v in combo.items()) for r in rows), combo
    assert {(c.rule, c.protocol) for c in CELLS if c.rejected and c.target == "sidecar"} == set(X.REJECTED)
    assert {c.rule for c in CELLS if c.rejected and c.target == "ambient" and c.limit == "unlimited"} == \
        set(X.AMBIENT_REJECTED)
    assert {c.limit for c in CELLS if c.rejected and c.target == "ambient" and c.limit != "unlimited"} == \
        {k for k, v in X.LIMITS.items() if v is not None}


def test_the_ambient_input_compiles_for_a_waypoint():
    """The ambient cells' rules compile for the ambient target (its TrafficExtension fits), with the
    warnings ``WARNED`` lists and no error."""
    opts, _ = parse_options(target="ambient", istio_version="1.31")
    for group in AMBIENT_GROUPS:
        result = compile_text(ambient_manifest(group), opts, "crossings.yaml")
        assert result.ok, [d.format() for d in result.diagnostics.items if d.severity == "error"]
        assert "TrafficExtension" in {o["kind"] for o in result.objects}


# ------------------------------------------------------------------------------------------------
# explain, offline, on the same cells
# ------------------------------------------------------------------------------------------------

#: headers Envoy adds or drops on the way (not the filter's doing, so not explain's to predict)
ENVOY_ADDS = {"x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms", "x-envoy-attempt-count",
              "x-envoy-original-host"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}
#: where explain does not predict what Envoy sends yet → the cells it concerns (strict xfail)
EXPLAIN_KNOWN: list[tuple[str, Callable[[X.Cell], bool]]] = []


def masked(text: str) -> str:
    for key in sorted((k for keys in X.KEYS.values() for k in keys), key=len, reverse=True):
        text = text.replace(key, "***")
    return text


def explain_marks(cell: X.Cell) -> list:
    reasons = [reason for reason, applies in EXPLAIN_KNOWN if applies(cell)]
    return [pytest.mark.xfail(strict=True, reason="; ".join(reasons))] if reasons else []


def predicted_tries(objects, cell: X.Cell, x: Exchange) -> dict:
    from compiler.explain import Request, explain

    forced = None
    if len(first_tries(cell)) > 1:
        forced = f"p-{pick(cell, x)}"  # the draw this exchange had
    return explain(objects, Request(host=cell.host, method="POST", path=cell.path, headers=x.sent_headers,
                                    body=x.sent_body), provider=forced)


def compare(predicted: dict, name: str, rec: Recorded) -> None:
    p = X.PROVIDERS[name]
    assert predicted["url"] == f"http://{p.host}{rec.path}", (predicted["url"], rec.path)
    sent = rec.body + rec.extra  # what Envoy sent, whatever its Content-Length said (item 2)
    assert predicted["body"] == masked(sent.decode()), (predicted["body"], sent)
    got = {k: masked(v) for k, v in rec.raw_headers if k not in ENVOY_ADDS}
    want = {k: v for k, v in predicted["headers"].items() if k not in HOP_BY_HOP}
    assert want == got, {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}


@pytest.mark.parametrize("cell", [pytest.param(c, id=c.id, marks=explain_marks(c)) for c in TRAFFIC])
def test_explain_predicts_the_cell(cell: X.Cell, objects, request):
    """What `llmc explain` predicts for the cell's request is what the providers received: each try's
    URL, headers (keys masked; Envoy's own additions aside), body and length; or llmc's reply. An
    ambient cell is explained from the ambient rendering (``llmc explain --target ambient``)."""
    if cell.target == "ambient":
        objects = request.getfixturevalue("ambient_objects")[waypoint_of(cell)]
    for x in exchanges(cell, request):
        predicted = predicted_tries(objects, cell, x)
        if not x.received:
            assert predicted.get("result", {}).get("status") == x.status, predicted
            assert json.loads(predicted["result"]["body"]) == json.loads(x.payload)
            continue
        tries = predicted.get("attempts") or [predicted["upstream"]]
        received = x.received  # in arrival order: the order of the tries
        if not cell.kind.failover:
            tries = tries * len(received)  # Envoy's own retries of one provider send the same request
        assert len(tries) >= len(received), (tries, received)
        for want, (name, rec) in zip(tries, received, strict=False):
            compare(want, name, rec)


def test_kept_connections_were_reused():
    """The desync oracle has teeth only on kept connections: the providers saw requests on reused ones."""
    recs = [r for xs in RESULTS.values() for x in xs for _, r in x.received]
    if not recs:
        pytest.skip("runs after the cells of this module")
    assert any(r.seq > 1 for r in recs), [(r.conn, r.seq) for r in recs]


def test_a_skipped_cell_fails_a_run_on_envoy_1_39():
    """`python -m tests.envoy_versions` treats a skipped cell of this module on Envoy 1.39+ as a failure."""
    from tests.envoy_versions import E2E, _failover_skipped

    assert "tests/test_crossings_e2e.py" in E2E
    assert _failover_skipped("SKIPPED [3] tests/test_crossings_e2e.py:290: failover needs Envoy 1.39+\n")
    assert not _failover_skipped("SKIPPED [1] tests/test_gitops.py:12: needs kpt\n")
    assert not _failover_skipped("SKIPPED [1] tests/test_several_keys_e2e.py:275: older proxies only: no patch\n")
    assert _failover_skipped("SKIPPED [1] tests/test_several_keys_e2e.py:231: key retry is patched into ...\n")
