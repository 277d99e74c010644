"""llmc: compile LLMProvider/LLMRoute into stock Istio resources."""

from __future__ import annotations

__version__ = "0.1.0"

from .diagnostics import Diagnostic, Diagnostics, Severity
from .pipeline import Result, compile_documents, compile_paths, compile_text
from .resolve import Options

__all__ = ["Diagnostic", "Diagnostics", "Options", "Result", "Severity", "__version__",
           "compile_documents", "compile_paths", "compile_text"]
