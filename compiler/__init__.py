"""llmc: compile LLMProvider/LLMRoute into stock Istio resources.

The public surface is re-exported lazily (PEP 562) so that ``llmc --help`` and ``--version`` do
not import the pipeline (jsonschema, pydantic, jinja2).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Diagnostic": "diagnostics", "Diagnostics": "diagnostics", "Severity": "diagnostics",
    "Result": "pipeline", "compile_documents": "pipeline", "compile_paths": "pipeline",
    "compile_text": "pipeline", "Options": "resolve",
}
__all__ = ["Diagnostic", "Diagnostics", "Options", "Result", "Severity", "__version__", "compile_documents",
           "compile_paths", "compile_text"]

if TYPE_CHECKING:  # pragma: no cover
    from .diagnostics import Diagnostic, Diagnostics, Severity
    from .pipeline import Result, compile_documents, compile_paths, compile_text
    from .resolve import Options


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
