"""Section "diff": how long `llmc diff` takes for 10,000 requests against two configurations of
100 rules (issue 36's target: under 30 s on the 2-core CI machine).

The configurations: 10 providers and one LLMRoute whose 100 rules match a header value each; half
of the rules split over two providers by weight. The head changes every tenth rule's weights. The
requests: 10,000, cycling over the rules' header values (a tenth match no rule: the last rule, with
no condition, takes them). Timed in-process (compile both sides, read the corpus, run), best of
``--rounds``; the figure includes LuaJIT's one load of the filter.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

NAME = "diff"
HELP = "time of `llmc diff` for 10,000 requests against two configurations of 100 rules"


def add_arguments(ap: argparse._ArgumentGroup) -> None:
    ap.add_argument("--requests", type=int, default=10_000, help="requests in the corpus (default 10000)")
    ap.add_argument("--rules", type=int, default=100, help="rules per configuration (default 100)")
    ap.add_argument("--rounds", type=int, default=1, help="timed runs; the best counts")


def configuration(rules: int, changed: bool) -> str:
    docs = []
    for p in range(10):
        docs.append(f"""apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: p{p}}}
spec:
  host: p{p}.example.com
  path: /v1/chat/completions
  configs: {{defaultConfig: {{openAIConfig: {{model: m{p}, apiKeySecretRef: {{name: keys, key: p{p}}}}}}}}}
""")
    lines = ["apiVersion: istio.alibabacloud.com/v1beta1", "kind: LLMRoute", "metadata: {name: bench}", "spec:",
             "  host: llm.bench.internal", "  rules:"]
    for r in range(rules):
        a, b = f"p{r % 10}.example.com", f"p{(r + 1) % 10}.example.com"
        match = f"    matches: [{{headers: {{x-rule: {{exact: r{r}}}}}}}]" if r < rules - 1 else None
        lines.append(f"  - name: r{r}")
        if match:
            lines.append(match)
        if r % 2:
            w = 70 if changed and r % 10 == 1 else 50
            lines.append(f"    backendRefs: [{{providerHost: {a}, weight: {w}}}, {{providerHost: {b}, weight: {100 - w}}}]")
        else:
            lines.append(f"    backendRefs: [{{providerHost: {a}}}]")
    docs.append("\n".join(lines) + "\n")
    return "---\n".join(docs)


def run(args: argparse.Namespace) -> dict:
    from compiler.diff import read_requests
    from compiler.diff import run as run_diff
    from compiler.options import parse_options
    from compiler.pipeline import compile_paths

    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for side, changed in (("base", False), ("head", True)):
            (Path(tmp) / f"{side}.yaml").write_text(configuration(args.rules, changed))
        corpus = Path(tmp) / "requests.jsonl"
        with corpus.open("w") as f:
            for i in range(args.requests):
                f.write(json.dumps({"host": "llm.bench.internal", "headers": {"x-rule": f"r{i % (args.rules + 10)}"},
                                    "body": {"messages": [{"role": "user", "content": f"hello {i}"}]}}) + "\n")
        opts, _ = parse_options()
        for _ in range(args.rounds):
            start = time.perf_counter()
            base = compile_paths([f"{tmp}/base.yaml"], opts)
            head = compile_paths([f"{tmp}/head.yaml"], opts)
            assert base.ok and head.ok
            report = run_diff(base.objects, head.objects, read_requests(str(corpus), base.objects))
            took = time.perf_counter() - start
            best = took if best is None else min(best, took)
    return {"requests": args.requests, "rules": args.rules, "seconds": round(best or 0, 2),
            "changed": report["summary"]["changed"], "target_seconds": 30}


def format(result: dict) -> str:
    return (f"llmc diff: {result['requests']} requests, two configurations of {result['rules']} rules: "
            f"{result['seconds']} s ({result['changed']} changed; target < {result['target_seconds']} s)")
