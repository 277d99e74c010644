"""Hypothesis properties of the compiler: determinism, order independence, names, quoting."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from compiler import Options, compile_paths
from compiler.emit import dump_yaml, yaml_quote
from compiler.names import cap, is_label, object_name
from tests.support.flow import to_flow

LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)
TEXT = st.text(max_size=40)


@st.composite
def inputs(draw):
    n = draw(st.integers(1, 4))
    names = draw(st.lists(LABEL, min_size=n, max_size=n, unique=True))
    providers = []
    for i, name in enumerate(names):
        cfg = {"model": draw(TEXT)}
        if draw(st.booleans()):
            cfg["stream"] = draw(st.booleans())
        providers.append({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
                          "metadata": {"name": name, "namespace": draw(st.sampled_from(["default", "ns-b"]))},
                          "spec": {"host": f"p{i}.example.com", "path": "/v1/chat/completions",
                                   "configs": {"defaultConfig": {"openAIConfig": cfg}}}})
    routes = []
    for ns in ("default", "ns-b"):
        hosts = [p["spec"]["host"] for p in providers if p["metadata"]["namespace"] == ns]
        if not hosts or not draw(st.booleans()):
            continue
        rules = []
        for r in range(draw(st.integers(1, 3))):
            backends = draw(st.lists(st.sampled_from(hosts), min_size=1, max_size=len(hosts), unique=True))
            rule = {"name": f"rule{r}", "backendRefs": [
                {"providerHost": h, "weight": draw(st.integers(1, 100))} for h in backends]}
            if r < 2:
                rule["matches"] = [{"headers": {"x-tier": {"exact": draw(TEXT)}}}]
            rules.append(rule)
        routes.append({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
                       "metadata": {"name": f"route-{ns}", "namespace": ns},
                       "spec": {"host": "chat", "rules": rules}})
    return providers + routes


def write(tmp_path, docs, files: int) -> list[str]:
    paths = []
    for i in range(files):
        part = docs[i::files]
        p = tmp_path / f"in{i}.yaml"
        p.write_text("\n---\n".join(to_flow(d) for d in part), encoding="utf-8")
        paths.append(str(p))
    return paths


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=inputs(), perm=st.randoms(use_true_random=False), files=st.integers(1, 3))
def test_order_independent_and_deterministic(tmp_path_factory, docs, perm, files):
    a = compile_paths(write(tmp_path_factory.mktemp("a"), docs, 1), Options())
    assert a.ok, a.diagnostics.format_text()
    shuffled = list(docs)
    perm.shuffle(shuffled)
    b = compile_paths(write(tmp_path_factory.mktemp("b"), shuffled, files), Options())
    assert dump_yaml(a.objects) == dump_yaml(b.objects)
    # every generated name is a DNS label, and the model text survives into the Lua context exactly
    out = list(YAML(typ="safe").load_all(dump_yaml(a.objects)))
    assert all(is_label(o["metadata"]["name"]) for o in out)
    models = {d["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] for d in docs
              if d["kind"] == "LLMProvider"}
    seen = set()
    for o in out:
        if o["kind"] == "EnvoyFilter":
            for patch in o["spec"]["configPatches"]:
                ctx = patch["patch"]["value"].get("typed_per_filter_config", {}).get("llmc.lua", {})
                for rule in ctx.get("filter_context", {}).get("rules", {}).values():
                    seen.update(b["model"] for b in rule["backends"])
    assert seen <= models and seen


@given(name=st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,250}[a-z0-9])?", fullmatch=True),
       prefix=st.sampled_from(["provider", "route"]))
def test_object_names_are_capped_labels(name, prefix):
    out = object_name(prefix, name)
    assert is_label(out), out
    assert object_name(prefix, name) == out


def test_distinct_names_stay_distinct():
    assert object_name("route", "a.b") != object_name("route", "a-b")
    long_a, long_b = "x" * 80 + "a", "x" * 80 + "b"
    assert object_name("route", long_a) != object_name("route", long_b)
    assert len(cap("y" * 300)) == 63


@given(text=st.text() | st.lists(st.sampled_from(["a", "\n", " ", "\t", "\u2028", "\x85", "é", "#", ":"]),
                                 max_size=12).map("".join))
@settings(max_examples=500, deadline=None)
def test_emitted_strings_round_trip(text):
    assert YAML(typ="safe").load(dump_yaml([{"v": text}]))["v"] == text


@given(text=st.text())
def test_yaml_quote_round_trips(text):
    assert YAML(typ="safe", pure=True).load(f"v: {yaml_quote(text)}")["v"] == text


@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                          lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                          max_leaves=20))
def test_flow_serializer_round_trips(value):
    assert YAML(typ="safe", pure=True).load(f"v: {to_flow(value)}")["v"] == value


@settings(max_examples=25, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
       junk=st.sampled_from(["\n", "\n\n", " "]))
def test_names_with_trailing_newlines_are_rejected(name, junk):
    """`$` matches before a trailing newline in Python: every name check must use fullmatch."""
    from compiler import Severity, compile_text

    bad = name + junk
    provider = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
                "metadata": {"name": bad}, "spec": {"host": "a.example.com", "path": "/v1/chat"}}
    route = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute", "metadata": {"name": "r"},
             "spec": {"host": "a.example.com", "rules": [
                 {"name": bad, "backendRefs": [{"providerHost": "a.example.com"}]},
                 {"matches": [{"headers": {bad: {"exact": "x"}}}], "backendRefs": [{"providerHost": "a.example.com"}]}]}}
    first = compile_text(to_flow(provider), Options())
    assert {d.code for d in first.diagnostics.items if d.severity is Severity.ERROR} == {"LLMC105"}
    provider["metadata"]["name"] = "p"
    second = compile_text(to_flow(provider) + "\n---\n" + to_flow(route), Options())
    assert {d.code for d in second.diagnostics.items if d.severity is Severity.ERROR} == {"LLMC208", "LLMC204"}
