"""CLI command: onnxlrp rules (every built-in composite and rule with its parameters)."""
from __future__ import annotations

import click

from .cli_options import command


@command("rules")
def rules_cmd() -> None:
    """List every built-in composite and rule, one line each, with parameters."""
    from .composites import builtin_names, load_composite
    from .rules import RULES, rule_parameters
    click.echo("composites:")
    for name in builtin_names():
        comp = load_composite(name)
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in comp.params.items())
        click.echo(f"  {name:28s} {comp.description} [{params}]")
    click.echo("rules:")
    for name, cls in RULES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        click.echo(f"  {name:12s} ({', '.join(rule_parameters(cls)) or '-'}) {doc}")


COMMANDS = (rules_cmd,)
