"""Google's Gemini API as the tests know it: a request checker and a local stand-in server.

Both follow Gemini's documented REST API (ai.google.dev/api: "Generating content" — models.generateContent
and models.streamGenerateContent, GenerateContentRequest / GenerateContentResponse, UsageMetadata,
FinishReason; "Content" — Content and Part; "Function calling" — Tool.functionDeclarations,
FunctionCall, FunctionResponse, ToolConfig.functionCallingConfig; "API keys" — the x-goog-api-key
header; "Troubleshooting" — error bodies ``{"error": {code, message, status}}``):

* :func:`request_problems` checks a ``POST …/models/{model}:generateContent`` (or
  ``:streamGenerateContent?alt=sse``) request: the key header, JSON content type, a model name in the
  path, and the body (``contents`` non-empty with roles ``user``/``model`` and non-empty ``parts``, each
  part one of ``text``/``inlineData``/``fileData``/``functionCall``/``functionResponse``; function
  responses answer the function calls of the model turn before them, one for one; no empty text part;
  the first ``functionCall`` part of each model step of the current turn carries its ``thoughtSignature``
  (one the double issued, or a dummy Google documents; Gemini 3's rule, "Thought signatures");
  ``systemInstruction`` text parts; ``tools[].functionDeclarations`` with names;
  ``toolConfig.functionCallingConfig.mode`` AUTO/ANY/NONE; ``generationConfig`` members Gemini defines;
  no member Gemini does not define — OpenAI's ``model``, ``messages``, ``stream`` included).
* :class:`GeminiUpstream` answers like the API: a ``GenerateContentResponse`` (text "Hello from Gemini", a
  ``functionCall`` part when the request offers tools and its last turn is the user's text, with a
  ``thoughtSignature`` as Gemini 3 gives it; ``usageMetadata`` with thinking tokens), or for
  ``streamGenerateContent?alt=sse`` the same as server-sent events (``data: {…}\\r\\n\\r\\n``), one per piece,
  the last with ``finishReason`` and the full usage, with a pause after the first; errors with Google's
  statuses (``x-test-status``, or ``fail`` as in :mod:`tests.support.upstream`). A request that fails
  :func:`request_problems` gets Gemini's 400 ``INVALID_ARGUMENT`` and is recorded, so tests see it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from http.server import BaseHTTPRequestHandler

from tests.support.upstream import ProviderDouble, end_stream, failed

TOP_LEVEL = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings",
             "cachedContent"}
GENERATION = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
              "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
              "responseLogprobs", "logprobs", "thinkingConfig"}
PART_KINDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult"}
STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
PATH = re.compile(r"^(?:/[^?]*)?/models/(?P<model>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<method>generateContent|"
                  r"streamGenerateContent)(?P<query>\?.*)?$")
USAGE = {"promptTokenCount": 21, "candidatesTokenCount": 9, "thoughtsTokenCount": 4, "cachedContentTokenCount": 5,
         "totalTokenCount": 34}
#: Signatures Google documents for function calls that did not come from Gemini (ai.google.dev/gemini-api/docs/
#: thought-signatures, FAQ: a history from another model): accepted in place of the call's own.
DUMMY_SIGNATURES = {"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"}
PROMPT, COMPLETION = 21, 9 + 4  # as llmc reports them: thinking tokens are completion tokens


def signature(name: str) -> str:
    """The thoughtSignature the double gives a call of function ``name`` (opaque base64, like Gemini's)."""
    return base64.b64encode(f"llmc-test-double thought before calling {name}".encode()).decode()


def _signature_problem(call: dict, where: str) -> list[str]:
    """Gemini 3 rejects a function call of the current turn without its signature, or with one it did not issue."""
    sig = call.get("thoughtSignature")
    if sig is None:
        return [f"{where}: Function call is missing a thought_signature in functionCall parts"]
    if sig in DUMMY_SIGNATURES:
        return []
    try:
        text = base64.b64decode(sig, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError):
        text = ""
    name = (call.get("functionCall") or {}).get("name")
    return [] if text == base64.b64decode(signature(str(name))).decode() else [f"{where}: Corrupted thought signature."]


def _current_turn_problems(contents: list) -> list[str]:
    """The first functionCall part of every model step since the last user text (the current turn)."""
    start = 0
    for i, c in enumerate(contents):
        if isinstance(c, dict) and c.get("role") == "user" and any(
                isinstance(p, dict) and "functionResponse" not in p for p in c.get("parts") or []):
            start = i
    out = []
    for i in range(start, len(contents)):
        c = contents[i]
        if not isinstance(c, dict) or c.get("role") != "model":
            continue
        calls = [j for j, p in enumerate(c.get("parts") or []) if isinstance(p, dict) and "functionCall" in p]
        if calls:
            out += _signature_problem(c["parts"][calls[0]], f"contents[{i}].parts[{calls[0]}]")
    return out


def _part_problems(p, where: str, role: str) -> list[str]:
    if not isinstance(p, dict):
        return [f"{where}: must be an object"]
    kinds = [k for k in p if k in PART_KINDS]
    extra = set(p) - PART_KINDS - {"thought", "thoughtSignature"}
    if len(kinds) != 1 or extra:
        return [f"{where}: exactly one of {sorted(PART_KINDS)} (got {sorted(p)})"]
    k, v = kinds[0], p[kinds[0]]
    if k == "text":  # Gemini refuses an empty one: "Unable to submit request because it has an empty text parameter"
        return [] if isinstance(v, str) and v else [f"{where}.text: a non-empty string"]
    if k == "inlineData":
        ok = isinstance(v, dict) and isinstance(v.get("mimeType"), str) and isinstance(v.get("data"), str)
        return [] if ok else [f"{where}.inlineData: needs mimeType and data"]
    if k == "functionCall":
        ok = role == "model" and isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(
            v.get("args", {}), dict)
        return [] if ok else [f"{where}.functionCall: needs a model turn, name and object args"]
    if k == "functionResponse":
        ok = role == "user" and isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(
            v.get("response"), dict)
        return [] if ok else [f"{where}.functionResponse: needs a user turn, name and an object response"]
    return []


def _calls(content: dict, kind: str) -> list[str]:
    return [p[kind]["name"] for p in content.get("parts") or [] if isinstance(p, dict) and kind in p
            and isinstance(p[kind], dict)]


def body_problems(body) -> list[str]:
    """Everything wrong with a GenerateContentRequest body, by Gemini's documented schema."""
    if not isinstance(body, dict):
        return ["body: must be a JSON object"]
    out = [f"Invalid JSON payload received. Unknown name {k!r}" for k in body if k not in TOP_LEVEL]
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        out.append("contents: required (non-empty array)")
        contents = []
    for i, c in enumerate(contents):
        if not isinstance(c, dict) or c.get("role") not in ("user", "model") or set(c) - {"role", "parts"}:
            out.append(f"contents[{i}]: needs role user|model and parts only")
            continue
        parts = c.get("parts")
        if not isinstance(parts, list) or not parts:
            out.append(f"contents[{i}].parts: required (non-empty array)")
            continue
        for j, p in enumerate(parts):
            out += _part_problems(p, f"contents[{i}].parts[{j}]", c["role"])
        answers = _calls(c, "functionResponse")
        if answers:
            asked = _calls(contents[i - 1], "functionCall") if i > 0 and isinstance(contents[i - 1], dict) else []
            if sorted(asked) != sorted(answers):
                out.append(f"contents[{i}]: the number of function response parts must equal the number of "
                           "function call parts of the function call turn")
    out += _current_turn_problems(contents)
    si = body.get("systemInstruction")
    if si is not None and not (isinstance(si, dict) and isinstance(si.get("parts"), list) and si["parts"]
                               and all(isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]
                                       for p in si["parts"])):
        out.append("systemInstruction: needs text parts")
    for i, t in enumerate(body.get("tools") or []):
        decls = t.get("functionDeclarations") if isinstance(t, dict) else None
        if not isinstance(decls, list) or not all(isinstance(d, dict) and isinstance(d.get("name"), str)
                                                  and set(d) <= {"name", "description", "parameters",
                                                                 "parametersJsonSchema", "response"}
                                                  for d in decls):
            out.append(f"tools[{i}].functionDeclarations: each needs a name")
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if "toolConfig" in body and mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        out.append("toolConfig.functionCallingConfig.mode: AUTO, ANY or NONE")
    gc = body.get("generationConfig")
    if gc is not None:
        if not isinstance(gc, dict):
            out.append("generationConfig: must be an object")
            gc = {}
        out += [f"generationConfig: Unknown name {k!r}" for k in gc if k not in GENERATION]
        mot = gc.get("maxOutputTokens")
        if mot is not None and not (isinstance(mot, int) and not isinstance(mot, bool) and mot >= 1):
            out.append("generationConfig.maxOutputTokens: an integer >= 1")
        stop = gc.get("stopSequences")
        if stop is not None and not (isinstance(stop, list) and len(stop) <= 5 and all(isinstance(s, str) for s in stop)):
            out.append("generationConfig.stopSequences: up to 5 strings")
        temp = gc.get("temperature")
        if temp is not None and not (isinstance(temp, int | float) and 0 <= temp <= 2):
            out.append("generationConfig.temperature: a number between 0 and 2")
    return out


def request_problems(path: str, headers: dict[str, str], body: bytes) -> list[str]:
    out = []
    m = PATH.match(path)
    if m is None:
        out.append(f"path: {path!r} is not .../models/<model>:generateContent or :streamGenerateContent")
    elif m["method"] == "streamGenerateContent" and "alt=sse" not in (m["query"] or ""):
        out.append("path: a stream without alt=sse is a JSON array, not server-sent events")
    elif m["method"] == "generateContent" and m["query"]:
        out.append(f"path: unexpected query {m['query']!r}")
    if not headers.get("x-goog-api-key"):
        out.append("x-goog-api-key: header is required")
    if not headers.get("content-type", "").startswith("application/json"):
        out.append("content-type: must be application/json")
    try:
        parsed = json.loads(body.decode("utf-8"))
    except ValueError:
        return [*out, "body: not JSON (or not UTF-8)"]
    return out + body_problems(parsed)


def response(model: str, ident: str, tool: dict | None, text: str = "Hello from Gemini") -> dict:
    parts: list[dict] = [{"text": text}]
    if tool is not None:
        parts.append({"functionCall": {"name": tool["name"], "args": {"city": "Paris", "days": 2}},
                      "thoughtSignature": signature(tool["name"])})
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": USAGE, "modelVersion": model, "responseId": f"resp_{ident}"}


def stream_events(model: str, ident: str, tool: dict | None) -> list[dict]:
    def event(parts: list[dict], **extra) -> dict:
        cand = {"content": {"role": "model", "parts": parts}, "index": 0, **extra}
        return {"candidates": [cand], "usageMetadata": {"promptTokenCount": USAGE["promptTokenCount"],
                                                        "totalTokenCount": USAGE["promptTokenCount"]},
                "modelVersion": model, "responseId": f"resp_{ident}"}
    out = [event([{"text": "Hel"}]), event([{"text": "lo"}])]
    if tool is not None:
        out.append(event([{"functionCall": {"name": tool["name"], "args": {"city": "Paris", "days": 2}},
                            "thoughtSignature": signature(tool["name"])}]))
    last = event([{"text": ""}], finishReason="STOP")
    last["usageMetadata"] = USAGE
    return [*out, last]


class GeminiUpstream(ProviderDouble):
    # fail: as Upstream.fail: "429"/"503" (that error), "reset", "hang"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        rec, problems, ident = self.record(h, request_problems)
        if failed(h, self.fail, self.hang):
            return
        status = int(self.fail) if self.fail and self.fail.isdigit() else int(rec.headers.get("x-test-status", "200"))
        if problems:
            return self._error(h, 400, "; ".join(problems))
        if status != 200:
            return self._error(h, status, f"test error {status}")
        m = PATH.match(h.path)
        assert m is not None
        req = json.loads(rec.body)
        last = req["contents"][-1]
        wants_tool = bool(req.get("tools")) and last["role"] == "user" and not _calls(last, "functionResponse")
        tool = req["tools"][0]["functionDeclarations"][0] if wants_tool else None
        if m["method"] == "streamGenerateContent":
            return self._sse(h, stream_events(m["model"], ident, tool))
        self._json(h, 200, response(m["model"], ident, tool))

    def _json(self, h, status: int, obj: dict) -> None:
        payload = json.dumps(obj, indent=2).encode()  # Google's answers are pretty-printed
        h.send_response(status)
        h.send_header("content-type", "application/json; charset=UTF-8")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _error(self, h, status: int, message: str) -> None:
        self._json(h, status, {"error": {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN")}})

    def _sse(self, h, events: list[dict]) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        for i, data in enumerate(events):
            chunk = f"data: {json.dumps(data, separators=(',', ':'))}\r\n\r\n".encode()
            h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.flush()
            if i == 0:
                self.pause_after_first()
        end_stream(h)
