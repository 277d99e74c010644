"""A rule's conditions: header matches (as Istio's VirtualService takes them) and `model` matches,
with the regular expressions Envoy's RE2 accepts, and the warnings about rules an earlier one shadows."""

from __future__ import annotations

import re

from .. import names
from ..api import StringMatch
from ..diagnostics import Diagnostics
from ..ir import HeaderMatch, ModelMatch, Rule
from ..load import Document

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-zA-Z-]+$")
NON_RE2 = re.compile(r"\(\?[=!<]|\\[1-9]|\(\?P=")


def header_matches(headers: dict[str, StringMatch], doc: Document, path: tuple,
                    diags: Diagnostics) -> tuple[HeaderMatch, ...]:
    out = []
    for name, sm in sorted(headers.items()):
        hpath = path + ("headers", name)
        if not HEADER_NAME.fullmatch(name):
            diags.error("LLMC204", f"invalid header name {name!r}", **doc.where(hpath))
            continue
        if name.lower().startswith(names.RESERVED_HEADER_PREFIX):
            diags.error("LLMC214", f"header {name!r} is reserved for llmc's internal routing",
                        **doc.where(hpath), hint=f"choose a name not starting with "
                        f"{names.RESERVED_HEADER_PREFIX!r}")
            continue
        set_fields = [(k, v) for k, v in (("exact", sm.exact), ("prefix", sm.prefix),
                                          ("regex", sm.regex)) if v is not None]
        if not set_fields:
            # Istio's VirtualService: `name: {}` checks that the header is present (any value)
            out.append(HeaderMatch(name=name.lower(), kind="present", value=""))
            continue
        if len(set_fields) != 1:
            diags.error("LLMC204", "a header match sets one of exact, prefix, regex, or none (\"{}\": the header is present) "
                        f"(found {len(set_fields)})", **doc.where(hpath))
            continue
        kind, value = set_fields[0]
        if kind == "regex":
            bad = NON_RE2.search(value)
            try:
                re.compile(value)
            except re.error as exc:
                diags.error("LLMC205", f"invalid regular expression: {exc}", **doc.where(hpath + ("regex",)))
                continue
            if bad:
                diags.error("LLMC205", f"regular expression uses {bad.group(0)!r}, which RE2 (Envoy) "
                            "does not support", **doc.where(hpath + ("regex",)))
                continue
        out.append(HeaderMatch(name=name.lower(), kind=kind, value=value))
    return tuple(out)


def model_match(sm: StringMatch, doc: Document, path: tuple, diags: Diagnostics) -> ModelMatch | None:
    """A `model` condition: exactly one non-empty kind; regexes must compile with RE2 (as Envoy's)."""
    set_fields = [(k, v) for k, v in (("exact", sm.exact), ("prefix", sm.prefix), ("regex", sm.regex)) if v is not None]
    if len(set_fields) != 1 or not set_fields[0][1]:
        diags.error("LLMC223", "a model match needs exactly one non-empty exact, prefix or regex "
                    f"(found {len(set_fields)})", **doc.where(path),
                    hint="e.g. model: {exact: gpt-4o}; to match any model, leave `model` out")
        return None
    kind, value = set_fields[0]
    if len(value.encode()) > names.MAX_MODEL_BYTES:
        diags.error("LLMC223", f"a model match longer than {names.MAX_MODEL_BYTES} bytes can never hold",
                    **doc.where(path + (kind,)))
        return None
    if kind == "regex":
        problem = re2_problem(value)
        if problem:
            diags.error("LLMC205", f"invalid RE2 regular expression: {problem}", **doc.where(path + ("regex",)))
            return None
    return ModelMatch(kind, value)


def re2_problem(pattern: str) -> str | None:
    """Why RE2 (the regex engine of Envoy) rejects ``pattern``, or None."""
    import re2

    try:
        re2.compile(pattern)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        return detail.decode() if isinstance(detail, bytes) else str(detail)
    return None


def re2_fullmatch(pattern: str, text: str) -> bool:
    import re2

    return re2.fullmatch(pattern, text) is not None


def check_model_rule(rules: list[Rule], index: int, doc: Document, diags: Diagnostics) -> None:
    """Warnings for the rule just added (``rules[-1]``, ``spec.rules[index]``): a model alias that an
    earlier rule always catches first, and a weighted rule mixing providers with and without
    `basePath` (an embeddings request would get 404 from some picks and reach the endpoint with others)."""
    rule = rules[-1]
    for j, m in enumerate(rule.matches):
        if m.model is None or m.model.kind == "regex":
            continue
        for earlier in rules[:-1]:
            shadow = next((e for e in earlier.matches if e.only_model and e.model and _covers(e.model, m.model)), None)
            if shadow is not None and shadow.model is not None:
                diags.warning("LLMC224", f"model {m.model.kind} {m.model.value!r} is always caught first by rule "
                              f"{earlier.name!r} ({shadow.model.kind} {shadow.model.value!r})",
                              **doc.where(("spec", "rules", index, "matches", j, "model")),
                              hint="put the more specific rule first")
                break
    if len({b.provider.base_path is not None for b in rule.backends}) > 1:
        diags.warning("LLMC225", "the rule's providers differ in `basePath`: requests to /v1/embeddings or "
                      "/v1/completions get 404 when a provider without it is picked",
                      **doc.where(("spec", "rules", index, "backendRefs")),
                      hint="give every provider of the rule a basePath, or none")


def _covers(earlier: ModelMatch, later: ModelMatch) -> bool:
    """True when every model ``later`` accepts is also accepted by ``earlier``."""
    if earlier.kind == "exact":
        return later.kind == "exact" and later.value == earlier.value
    if earlier.kind == "prefix":
        return later.value.startswith(earlier.value)
    return later.kind == "exact" and re2_fullmatch(earlier.value, later.value)
