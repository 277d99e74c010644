"""Host names as Istio and Envoy need them: one check, used for LLMProvider hosts, LLMRoute hosts,
``hostRewrite`` values and ``--egress-gateway``.

A host llmc writes into a ServiceEntry, a VirtualService, an SNI and an Envoy virtual host must be
a bare DNS name: no scheme, no port, no path, no blanks. A URL is the most likely first mistake
(``host: https://api.openai.com/v1``), so the hint says what to write instead, field by field.
Wildcards: a provider host never (SNI and certificate SANs need one concrete name); a route host
only as ``*`` on a gateway-bound route (Istio: every host the Gateway serves).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
#: Istio's wildcard hosts: "*" or "*.<name>"
WILDCARD = re.compile(rf"\*(\.{_LABEL})*")


@dataclass(frozen=True)
class HostProblem:
    message: str
    hint: str


def _split(text: str) -> tuple[str, int | None, str]:
    """(host, port, path) of what looks like a URL or host:port/path; best effort, for the hint."""
    url = urlsplit(text if "://" in text else f"//{text}")
    try:
        port = url.port
    except ValueError:
        port = None
    return (url.hostname or "", port, url.path)


def _endpoint(path: str) -> str:
    """The chat endpoint under a base URL's path: ``path`` is the full request path, so a base such
    as ``/v1`` or ``/compatible-mode/v1`` (what provider docs give as the base URL) gets
    ``/chat/completions``; a path that already names an endpoint stays as written."""
    path = "/" + path.strip("/")
    if path.endswith(("/chat/completions", "/messages", "/completions", "/embeddings")):
        return path
    return path + "/chat/completions"


def host_problem(host: str, *, wildcard: bool = False, path_hint: str = "path", field: str = "host",
                 ) -> HostProblem | None:
    """What is wrong with ``host`` as a host name, or None. ``wildcard``: "*" alone is allowed.

    ``path_hint`` names the field a path belongs in (a provider's ``path``; nothing for a route)."""
    text = host.strip()
    if text == "*" and wildcard:
        return None
    if "://" in text or "/" in text or ":" in text:
        name, port, path = _split(text)
        parts = [f"{field}: {name}"] if name else []
        if port is not None:
            parts.append(f"port: {port}")
        if path.strip("/") and path_hint:
            parts.append(f"{path_hint}: {_endpoint(path)}")
        what = ("a URL" if "://" in text else "a port" if ":" in text and "/" not in text
                else "a path")
        return HostProblem(f"host {host!r} is {what}, not a host name",
                           "write " + ", ".join(parts) if parts else "write the bare host name, e.g. api.openai.com")
    if "*" in text:
        if wildcard:
            return HostProblem(f"host {host!r}: the only wildcard an LLMRoute host may be is \"*\" "
                               "(on a gateway-bound route)", "write \"*\" or a concrete host")
        return HostProblem(f"host {host!r} is a wildcard; a provider needs one concrete host (its SNI and "
                           "certificate names depend on it)", "write the provider's host, e.g. api.openai.com")
    if text != host or any(c.isspace() for c in text):
        return HostProblem(f"host {host!r} contains blanks", "write a DNS name such as api.openai.com")
    if not DNS_NAME.fullmatch(text.lower()) or len(text) > 253:
        return HostProblem(f"host {host!r} is not a DNS name", "use letters, digits, '-' and '.', "
                           "e.g. api.openai.com or demo-llm-server")
    return None
