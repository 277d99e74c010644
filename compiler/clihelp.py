"""How ``llmc --help`` reads: one line per command in the command list, no ``<bool>`` after a flag,
``<str>`` rather than ``<list[str]>`` after a repeatable option; and the ``completion`` script.

Typer prints a flag's type (``--telemetry <bool>``) although a flag takes no value, and a command's
whole docstring, hard line breaks included, in the command list. The classes below are Typer's own
command and group with those two things changed; ``compiler/cli.py`` uses them for every command.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup


def _tidy(params: list[Any]) -> list[Any]:
    """Click's parameters, duck-typed: Typer 0.12 uses click, newer Typers a private copy of it."""
    for param in params:
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""  # a flag takes no value
        elif param.multiple:
            param.metavar = "<str>"  # repeatable: the help text says so
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(super().get_params(ctx))


SHELLS = ("bash", "zsh", "fish", "powershell")


def completion_script(shell: str) -> str:
    """What ``llmc --show-completion SHELL`` prints (``llmc completion SHELL``, as kubectl and istioctl
    have it): the script that asks ``llmc`` itself for completions."""
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="llmc", complete_var="_LLMC_COMPLETE", shell=shell)
