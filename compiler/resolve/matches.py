"""A rule's conditions: header matches (as Istio's VirtualService takes them) and body matches (the
fields of ``names.BODY_FIELDS``, e.g. `model`), with the regular expressions Envoy's RE2 accepts, and
the warnings about rules an earlier one shadows."""

from __future__ import annotations

import re

from .. import names
from ..api import RouteMatch, StringMatch
from ..diagnostics import Diagnostics
from ..ir import BodyMatch, HeaderMatch, Rule
from ..load import Document

HEADER_NAME = names.HEADER_NAME
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


def body_matches(m: RouteMatch, doc: Document, path: tuple, diags: Diagnostics) -> tuple[BodyMatch, ...] | None:
    """The match's conditions on body fields (``names.BODY_FIELDS``, each the field of the same name of
    ``matches[]``), sorted by field; None after an error."""
    out = []
    for field in sorted(names.BODY_FIELDS):
        sm = getattr(m, field)
        if sm is not None:
            out.append(body_match(field, sm, doc, path + (field,), diags))
    return None if None in out else tuple(b for b in out if b is not None)


def body_match(field: str, sm: StringMatch, doc: Document, path: tuple, diags: Diagnostics) -> BodyMatch | None:
    """A condition on a body field: exactly one non-empty kind; regexes must compile with RE2 (as Envoy's)."""
    spec = names.BODY_FIELDS[field]
    set_fields = [(k, v) for k, v in (("exact", sm.exact), ("prefix", sm.prefix), ("regex", sm.regex)) if v is not None]
    if len(set_fields) != 1 or not set_fields[0][1]:
        diags.error("LLMC223", f"a {field} match needs exactly one non-empty exact, prefix or regex "
                    f"(found {len(set_fields)})", **doc.where(path),
                    hint=f"e.g. {field}: {{exact: {spec.example}}}; to match any {field}, leave `{field}` out")
        return None
    kind, value = set_fields[0]
    if len(value.encode()) > spec.limit:
        diags.error("LLMC223", f"a {field} match longer than {spec.limit} bytes can never hold",
                    **doc.where(path + (kind,)))
        return None
    if kind == "regex":
        problem = re2_problem(value)
        if problem:
            diags.error("LLMC205", f"invalid RE2 regular expression: {problem}", **doc.where(path + ("regex",)))
            return None
    return BodyMatch(field, kind, value)


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


def check_body_rule(rules: list[Rule], index: int, doc: Document, diags: Diagnostics) -> None:
    """Warnings for the rule just added (``rules[-1]``, ``spec.rules[index]``): a body condition (a
    model alias) that an earlier rule always catches first, and a weighted rule mixing providers with
    and without `basePath` (an embeddings request would get 404 from some picks and reach the
    endpoint with others)."""
    rule = rules[-1]
    for j, m in enumerate(rule.matches):
        for earlier in rules[:-1]:
            shadow = next(((e, c) for e in earlier.matches if e.only_body
                           for c in [_caught(e.body, m.body)] if c is not None), None)
            if shadow is not None:
                (first, later) = shadow[1]
                diags.warning("LLMC224", f"{later.field} {later.kind} {later.value!r} is always caught first by "
                              f"rule {earlier.name!r} ({first.field} {first.kind} {first.value!r})",
                              **doc.where(("spec", "rules", index, "matches", j, later.field)),
                              hint="put the more specific rule first")
                break
    if len({b.provider.base_path is not None for b in rule.backends}) > 1:
        diags.warning("LLMC225", "the rule's providers differ in `basePath`: requests to /v1/embeddings or "
                      "/v1/completions get 404 when a provider without it is picked",
                      **doc.where(("spec", "rules", index, "backendRefs")),
                      hint="give every provider of the rule a basePath, or none")


def _caught(earlier: tuple[BodyMatch, ...], later: tuple[BodyMatch, ...]) -> tuple[BodyMatch, BodyMatch] | None:
    """When every condition of ``earlier`` accepts all that a (non-regex) condition of ``later`` on
    the same field accepts, a pair of them to name; else None."""
    pairs = []
    for e in earlier:
        covered = next((lt for lt in later if lt.field == e.field and lt.kind != "regex" and _covers(e, lt)), None)
        if covered is None:
            return None
        pairs.append((e, covered))
    return pairs[0] if pairs else None


def _covers(earlier: BodyMatch, later: BodyMatch) -> bool:
    """True when every value ``later`` accepts is also accepted by ``earlier``."""
    if earlier.kind == "exact":
        return later.kind == "exact" and later.value == earlier.value
    if earlier.kind == "prefix":
        return later.value.startswith(earlier.value)
    return later.kind == "exact" and re2_fullmatch(earlier.value, later.value)
