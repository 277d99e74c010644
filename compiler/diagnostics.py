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


#: Stable diagnostic codes. 0xx: input reading, 1xx: schema, 2xx: cross-object checks, 9xx: internal.
CODES: dict[str, str] = {
    "LLMC001": "YAML syntax error",
    "LLMC002": "document is not a Kubernetes object",
    "LLMC003": "duplicate object",
    "LLMC004": "cannot read input",
    "LLMC005": "unsupported apiVersion",
    "LLMC101": "unknown field",
    "LLMC102": "wrong type",
    "LLMC103": "missing required field",
    "LLMC104": "invalid value",
    "LLMC105": "invalid object name",
    "LLMC201": "duplicate provider host",
    "LLMC202": "backendRef names an unknown provider host",
    "LLMC203": "routeSpecificConfigs key names no rule",
    "LLMC204": "invalid header match",
    "LLMC205": "invalid regular expression",
    "LLMC206": "invalid weights",
    "LLMC207": "apiKey is a placeholder",
    "LLMC208": "generated name is invalid",
    "LLMC209": "duplicate rule name",
    "LLMC210": "two LLMRoutes for one host",
    "LLMC211": "conflicting api key settings",
    "LLMC212": "unreachable rule",
    "LLMC213": "conflicting workloadSelector",
    "LLMC214": "reserved header",
    "LLMC215": "literal apiKey is stored in generated config",
    "LLMC216": "sourceLabels in egress-gateway mode",
    "LLMC217": "gateway route without a gateway workloadSelector",
    "LLMC901": "internal error",
}


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

    def register_secret(self, value: str) -> None:
        if value and value not in self._secrets:
            self._secrets.add(value)
            self._masked.clear()

    def add(self, code: str, severity: Severity, message: str, **where: object) -> Diagnostic:
        if code not in CODES:
            raise KeyError(f"unregistered diagnostic code {code}")
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
            for secret in self._secrets:
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
