"""CLI command: onnxlrp rules (every built-in composite and rule with its parameters, wrapped to the terminal)."""
from __future__ import annotations

import shutil
import textwrap

import click

from .cli_options import command

NAME_WIDTH = 27


def _entry(name: str, text: str, width: int) -> str:
    """'  name   text' with text wrapped on word boundaries to width, continuation lines under the text."""
    indent = " " * (NAME_WIDTH + 3)
    head = ""
    first = f"  {name:{NAME_WIDTH}s} "
    if len(first) > len(indent):  # a long name gets a line of its own
        head, first = f"  {name}\n", indent
    return head + textwrap.fill(text, width=max(width, len(indent) + 20), initial_indent=first,
                                subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def _summary(doc: str) -> str:
    """A docstring's first paragraph as one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


@command("rules", short_help="List the built-in composites and rules.")
def rules_cmd() -> None:
    """List every built-in composite (with its parameters' defaults) and every rule (with its parameters and
    formula), wrapped to the terminal's width."""
    from .composites import SHARED_COMPOSITES, builtin_names, load_composite
    from .rules import RULES, rule_parameters
    width = shutil.get_terminal_size((80, 24)).columns
    click.echo("composites (--composite NAME; --set KEY=VALUE changes a parameter):")
    for name in builtin_names(shared=False):
        comp = load_composite(name)
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in comp.params.items())
        click.echo(_entry(name, f"{comp.description} [{params}]", width))
    shared = ", ".join(SHARED_COMPOSITES)
    click.echo(_entry(f"({shared})", f"what the built-in composites share, for `extends = \"{shared}\"` in your "
                                      f"own composite; explains nothing on its own", width))
    from .gradient import DESCRIPTION
    click.echo(_entry("gradient", f"{DESCRIPTION} []", width))
    click.echo("rules (the rule of a [[match]] entry, with its parameters):")
    for name, cls in RULES.items():
        params = ", ".join(rule_parameters(cls)) or "-"
        click.echo(_entry(f"{name} ({params})", _summary(cls.__doc__ or ""), width))


COMMANDS = (rules_cmd,)
