"""Azure OpenAI's chat completions API as a local stand-in (learn.microsoft.com, "Azure OpenAI in
Azure AI Foundry Models REST API reference", data plane inference).

``POST /openai/deployments/{deployment-id}/chat/completions?api-version={api-version}`` (and
``.../embeddings?api-version=...``), the key in
the ``api-key`` header (or an Entra ID token in ``Authorization: Bearer``), a JSON body with
``messages`` (the deployment decides the model). Checked here: the path shape and a known
deployment (else 404 ``DeploymentNotFound``), ``api-version`` present (else 404 — Azure answers a
missing version with ``Resource not found``), a credential (else 401 with Azure's message), and
``messages`` an array (else 400). A request that passes is answered by the OpenAI double
(tests/support/upstream.py: the response format is OpenAI's); every request is recorded either way.
A stream starts as Azure's does with content filtering on (the default): a first chunk with empty
``choices``, an empty ``id``, ``object`` and ``model`` and the prompt's ``prompt_filter_results``,
then the completion's chunks, which name the model.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.support.upstream import Upstream, read_request

PATH = re.compile(r"^/openai/deployments/([A-Za-z0-9._-]+)/(?:chat/completions|embeddings)$")
SAFE = {"filtered": False, "severity": "safe"}
# Azure's first streamed chunk with content filtering on: no model yet (issue 24, item 9)
PROMPT_FILTER_CHUNK = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [
    {"prompt_index": 0, "content_filter_results": {k: SAFE for k in ("hate", "self_harm", "sexual", "violence")}}]}
NO_KEY = ("Access denied due to missing subscription key. Make sure to include subscription key when making "
          "requests to an API.")


class AzureUpstream(Upstream):
    deployments: tuple[str, ...] = ()

    def __init__(self, name: str, deployments: tuple[str, ...], **options):
        self.deployments = deployments
        super().__init__(name, **options)

    def _first_events(self) -> list[dict]:
        return [PROMPT_FILTER_CHUNK]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        found = PATH.match(url.path)
        problem = None
        if not found or found.group(1) not in self.deployments:
            problem = (404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this "
                                       "resource does not exist."}})
        elif not parse_qs(url.query).get("api-version"):
            problem = (404, {"error": {"code": "404", "message": "Resource not found"}})
        elif not h.headers.get("api-key") and not (h.headers.get("authorization") or "").startswith("Bearer "):
            problem = (401, {"statusCode": 401, "message": NO_KEY})
        if problem is None:
            return super()._handle(h)
        rec = read_request(h)
        with self._lock:
            self.requests.append(rec)
        payload = json.dumps(problem[1]).encode()
        h.send_response(problem[0])
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
