"""Opt-in observability objects (``llmc render --telemetry``); see :mod:`compiler.telemetry`."""

from __future__ import annotations

from ..ir import Program
from ..telemetry import telemetry_views


def translate_telemetries(program: Program) -> list[dict]:
    return telemetry_views(program)[0] if program.telemetry else []


def translate_token_metrics(program: Program) -> list[dict]:
    return telemetry_views(program)[1] if program.telemetry else []
