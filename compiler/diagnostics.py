"""Diagnostics: errors and warnings as values with a place.

Every stage reports problems into one :class:`Diagnostics` collector instead of raising, so a run
reports *every* problem at once (like a compiler) and the pipeline can stop between stages once an
error exists. Codes are stable and listed in :data:`CODES`; tests assert on (code, path).

Messages must never contain secret values: callers pass field paths and object names, never an
``apiKey`` value. :func:`Diagnostics.add` enforces that for values registered as secrets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True)
class Message:
    """One registered diagnostic: its public code, its one severity and its one meaning (as in
    Istio's analyzer ``messages.yaml``). Codes are public and never reused for another meaning."""

    code: str
    severity: Severity
    title: str


_E, _W, _N = Severity.ERROR, Severity.WARNING, Severity.NOTE

#: The registry. 0xx: input reading, 1xx: schema, 2xx: cross-object checks, 9xx: internal.
MESSAGES: tuple[Message, ...] = (
    Message("LLMC001", _E, "YAML syntax error"),
    Message("LLMC002", _E, "document is not a Kubernetes object"),
    Message("LLMC003", _E, "duplicate object"),
    Message("LLMC004", _E, "cannot read input"),
    Message("LLMC005", _E, "unsupported apiVersion"),
    Message("LLMC006", _E, "no LLMProvider or LLMRoute in the input"),
    Message("LLMC007", _E, "unknown function option"),
    Message("LLMC008", _N, "an object that is not llmc's is ignored"),
    Message("LLMC009", _N, "files that hold no Kubernetes object are skipped"),
    Message("LLMC010", _E, "invalid option value"),
    Message("LLMC011", _W, "target Istio version with a known limit"),
    Message("LLMC101", _E, "unknown field"),
    Message("LLMC102", _E, "wrong type"),
    Message("LLMC103", _E, "missing required field"),
    Message("LLMC104", _E, "invalid value"),
    Message("LLMC105", _E, "invalid object name"),
    Message("LLMC201", _E, "duplicate provider host"),
    Message("LLMC202", _E, "backendRef names an unknown provider host"),
    Message("LLMC203", _W, "routeSpecificConfigs key names no rule"),
    Message("LLMC204", _E, "invalid header match"),
    Message("LLMC205", _E, "invalid regular expression"),
    Message("LLMC206", _E, "invalid weights"),
    Message("LLMC207", _W, "apiKey is a placeholder"),
    Message("LLMC208", _E, "generated name is invalid"),
    Message("LLMC209", _E, "duplicate rule name"),
    Message("LLMC210", _E, "two LLMRoutes for one host"),
    Message("LLMC211", _E, "conflicting api key settings"),
    Message("LLMC212", _W, "unreachable rule"),
    Message("LLMC213", _E, "conflicting workloadSelector"),
    Message("LLMC214", _E, "reserved header"),
    Message("LLMC215", _W, "literal apiKey is stored in generated config"),
    Message("LLMC216", _E, "sourceLabels in egress-gateway mode"),
    Message("LLMC217", _E, "gateway route without a gateway workloadSelector"),
    Message("LLMC218", _E, "generated route names collide"),
    Message("LLMC219", _W, "streaming turned on for clients that do not ask"),
    Message("LLMC220", _E, "TLS origination to an in-mesh Service"),
    Message("LLMC221", _E, "invalid gateway reference"),
    Message("LLMC222", _E, "match gateways outside the route's gateways"),
    Message("LLMC223", _E, "invalid model match"),
    Message("LLMC224", _W, "model match shadowed by an earlier rule"),
    Message("LLMC225", _W, "a rule's providers differ in basePath"),
    Message("LLMC226", _E, "invalid host"),
    Message("LLMC227", _E, "backendRef to an InferencePool"),
    Message("LLMC228", _E, "invalid exportTo"),
    Message("LLMC229", _W, "backendRef without a weight gets no traffic"),
    Message("LLMC230", _E, "provider host is ambiguous"),
    Message("LLMC231", _W, "API key must reach calling pods in another namespace"),
    Message("LLMC232", _W, "generated object too large for kubectl apply"),
    Message("LLMC233", _E, "generated object larger than etcd accepts"),
    Message("LLMC234", _E, "failover needs a newer Istio"),
    Message("LLMC235", _E, "invalid failover settings"),
    Message("LLMC236", _E, "a provider's configs mix protocols"),
    Message("LLMC237", _E, "missing endpoint setting"),
    Message("LLMC238", _E, "invalid authHeader"),
    Message("LLMC239", _W, "a keyless provider on a failover rule gets no key"),
    Message("LLMC240", _W, "hostRewrite sends a provider's key to another host name"),
    Message("LLMC241", _E, "basePath on a provider that does not speak OpenAI's API"),
    Message("LLMC242", _N, "weights are shares of their sum"),
    Message("LLMC243", _E, "gateway pods the operator does not allow"),
    Message("LLMC250", _E, "an API key is listed twice"),
    Message("LLMC251", _W, "keySelection or retryKeysOn on a config with one key"),
    # LLMC252 (retryKeysOn on a failover rule) was lifted by issue 33: never reused
    Message("LLMC253", _E, "retryKeysOn needs Istio 1.31"),
    Message("LLMC254", _E, "retryKeysOn on the ambient target"),
    # token limits (issue 30); numbered apart from the 24x series other work extends
    Message("LLMC260", _E, "tokenLimits without a rate-limit service"),
    Message("LLMC261", _E, "token-limit key header carries a credential or is internal"),
    Message("LLMC262", _E, "sourceWorkload token-limit key in egress-gateway mode"),
    Message("LLMC263", _W, "sourceWorkload token-limit key on a gateway: the source is the gateway"),
    Message("LLMC264", _E, "token limit beyond the rate-limit service's range"),
    Message("LLMC265", _E, "duplicate token limit name"),
    Message("LLMC266", _W, "model token-limit key without a model the proxy knows"),
    Message("LLMC267", _E, "limit without exactly one of tokens and budget"),
    Message("LLMC268", _E, "cost weights on a money budget"),
    Message("LLMC269", _E, "money budget on a provider without prices"),
    # the ambient target (issue 35): what a waypoint's TrafficExtension cannot do
    Message("LLMC271", _E, "route bound to gateways on the ambient target"),
    Message("LLMC272", _E, "failover on the ambient target"),
    Message("LLMC273", _E, "sourceLabels match on the ambient target"),
    Message("LLMC274", _E, "token limits on the ambient target"),
    Message("LLMC275", _E, "match on a header the filter rewrites, on the ambient target"),
    Message("LLMC276", _W, "maxRequestBytes beyond a waypoint's buffer"),
    Message("LLMC277", _W, "Secret key on the ambient target: the waypoint must mount it"),
    Message("LLMC278", _N, "in-mesh host must be enrolled in the waypoint"),
    Message("LLMC279", _E, "TrafficExtension larger than Istio accepts"),
    Message("LLMC280", _E, "literal API key cannot be sent in a header"),
    Message("LLMC281", _W, "credential in the query of spec.path or spec.basePath"),
    Message("LLMC901", _E, "internal error"),
)
REGISTRY: dict[str, Message] = {m.code: m for m in MESSAGES}
#: code → title (kept for callers that only need the meaning)
CODES: dict[str, str] = {m.code: m.title for m in MESSAGES}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    file: str = "<input>"
    line: int = 0  # 1-based; 0 = unknown
    col: int = 0  # 1-based; 0 = unknown
    object: str = ""  # "Kind ns/name"
    path: str = ""  # API-server style field path, e.g. spec.rules[0].backendRefs[1].providerHost
    hint: str = ""

    def format(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}:{self.col or 1}"
        head = f"{where}: {self.severity.value}[{self.code}]"
        subject = " ".join(p for p in (self.object + ":" if self.object else "",
                                       self.path + ":" if self.path else "") if p)
        text = f"{head} {subject} {self.message}" if subject else f"{head} {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_json(self) -> dict:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


@dataclass
class Diagnostics:
    """Collects diagnostics; masks registered secret values in every message."""

    items: list[Diagnostic] = field(default_factory=list)
    _secrets: set[str] = field(default_factory=set)
    # masked text by text: a mesh with a thousand literal keys draws a thousand warnings with the
    # same message, and masking one message tries every registered secret
    _masked: dict[str, str] = field(default_factory=dict)
    _order: tuple[str, ...] | None = None

    def register_secret(self, value: str) -> None:
        """Mask ``value`` in every later message, also in the forms a message prints it: escaped as
        Python's repr and JSON do (a list of keys in a schema message; a line break or a backslash
        in a key) and without blanks around it."""
        if not value:
            return
        forms = {value, value.strip(), repr(value)[1:-1], json.dumps(value)[1:-1],
                 json.dumps(value, ensure_ascii=False)[1:-1]}
        new = {f for f in forms if len(f) >= min(4, len(value))} - self._secrets
        if new:
            self._secrets |= new
            self._order = None
            self._masked.clear()

    def add(self, code: str, severity: Severity, message: str, **where: object) -> Diagnostic:
        registered = REGISTRY.get(code)
        if registered is None:
            raise KeyError(f"unregistered diagnostic code {code}")
        if registered.severity is not severity:
            raise ValueError(f"{code} is registered as {registered.severity.value}, not {severity.value}")
        message = self.mask(message)
        hint = self.mask(str(where.pop("hint", "") or ""))
        diag = Diagnostic(code=code, severity=severity, message=message, hint=hint, **where)  # type: ignore[arg-type]
        self.items.append(diag)
        return diag

    def error(self, code: str, message: str, **where: object) -> Diagnostic:
        return self.add(code, Severity.ERROR, message, **where)

    def warning(self, code: str, message: str, **where: object) -> Diagnostic:
        return self.add(code, Severity.WARNING, message, **where)

    def note(self, code: str, message: str, **where: object) -> Diagnostic:
        return self.add(code, Severity.NOTE, message, **where)

    def mask(self, text: str) -> str:
        if not text or not self._secrets:
            return text
        masked = self._masked.get(text)
        if masked is None:
            masked = text
            if self._order is None:  # longest first, then by value: one output whatever the order
                self._order = tuple(sorted(self._secrets, key=lambda f: (-len(f), f)))
            for secret in self._order:
                masked = masked.replace(secret, "***")
            self._masked[text] = masked
        return masked

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=lambda d: (d.file, d.line, d.col, d.code, d.path, d.message))

    def summary(self) -> str:
        errors = sum(d.severity is Severity.ERROR for d in self.items)
        warnings = sum(d.severity is Severity.WARNING for d in self.items)
        return f"{errors} error(s), {warnings} warning(s)"

    def format_text(self, per_code: int | None = None) -> str:
        """Every diagnostic, one after another; with ``per_code``, only the first ``per_code`` of
        each code, then one line per code that had more, with the count left out (a mesh with a
        thousand literal keys should not print a thousand identical warnings)."""
        shown: list[str] = []
        hidden: dict[tuple[str, str], int] = {}
        seen: dict[str, int] = {}
        for d in self.sorted():
            seen[d.code] = seen.get(d.code, 0) + 1
            if per_code is None or seen[d.code] <= per_code:
                shown.append(d.format())
            else:
                key = (d.code, d.severity.value)
                hidden[key] = hidden.get(key, 0) + 1
        for (code, severity), n in sorted(hidden.items()):
            shown.append(f"... and {n} more {severity}[{code}] ({CODES[code]}) not shown; "
                         "`llmc validate -o json` lists every diagnostic")
        return "\n".join(shown)

    def format_json(self) -> str:
        return json.dumps([d.to_json() for d in self.sorted()], indent=2, ensure_ascii=False)
