"""Request and response bodies for the data-plane and Lua benchmarks, by name (``--sizes``).

Plain bodies are chat requests of many short ASCII messages. Escaped bodies are what clients
really send when a prompt holds a long document: ``cjk`` is Chinese text as Python's
``json.dumps`` sends it by default (every character a ``\\uXXXX`` escape), ``md`` a long markdown
list (a ``\\n`` escape every ~40 bytes). Both put the document in one long string, where a scanner
that is not linear in escapes shows it. Every body is at most its nominal size (an 8 MiB body
must fit llmc's default 8 MiB request limit).
"""

from __future__ import annotations

import json

KIB, MIB = 1 << 10, 1 << 20
SIZES = {"1k": KIB, "64k": 64 * KIB, "1m": MIB, "8m": 8 * MIB}
KINDS = ("plain", "cjk", "md")
DEFAULT = "1k,64k,1m,8m,1m-cjk,8m-cjk,1m-md,8m-md"


def parse(names: str) -> list[str]:
    out = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        size, _, kind = name.partition("-")
        if size not in SIZES or (kind or "plain") not in KINDS:
            raise SystemExit(f"unknown body {name!r}: use SIZE[-KIND], SIZE in {', '.join(SIZES)}, "
                             f"KIND in {', '.join(KINDS[1:])}")
        out.append(name)
    return out


def label(name: str) -> str:
    size, _, kind = name.partition("-")
    nominal = {"1k": "1 KiB", "64k": "64 KiB", "1m": "1 MiB", "8m": "8 MiB"}[size]
    return f"{nominal} {kind}" if kind else nominal


def largest(build, size: int) -> bytes:
    """``build(n)`` for the largest n whose output is at most ``size`` bytes (n ≥ 1)."""
    lo, hi = 1, 2
    while len(build(hi)) <= size:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if len(build(mid)) <= size else (lo, mid)
    return build(lo)


def chat_body(size: int) -> bytes:
    """Many short messages, at most ``size`` bytes (and at least one message)."""
    return largest(lambda n: json.dumps({
        "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}: " + "lorem ipsum " * 20}
                     for i in range(n)], "temperature": 0.7}).encode(), size)


def document(kind: str, n: int) -> str:
    """``n`` characters of a long document."""
    if kind == "cjk":  # common CJK ideographs, cycled: json.dumps escapes every one as \\uXXXX
        return "".join(chr(0x4E00 + (i * 7919) % 0x5000) for i in range(n))
    text = "\n".join(f"- item {i}: check the **config** of service `svc-{i % 97}`" for i in range(n // 40 + 1))
    return text[:n]


def escaped_body(kind: str, size: int) -> bytes:
    """A system prompt and one user message holding a long ``kind`` document, at most ``size`` bytes."""
    return largest(lambda n: json.dumps({"messages": [{"role": "system", "content": "Summarise the document."},
                                                       {"role": "user", "content": document(kind, n)}],
                                          "temperature": 0.7}).encode(), size)


def body(name: str) -> bytes:
    size, _, kind = name.partition("-")
    return escaped_body(kind, SIZES[size]) if kind else chat_body(SIZES[size])


def escapes(data: bytes) -> int:
    return data.count(b"\\")
