"""The CLI's shape: one module per command group, importing down only, every module's commands registered."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest

from onnxlrp import cli
from onnxlrp.cli import command_modules, main, register_commands

PACKAGE = Path(cli.__file__).parent
COMMANDS = {"bench", "bias-table", "compile", "demo", "explain", "inspect", "profile", "rules"}


def test_command_modules_import_down_only():
    """No command module imports the `onnxlrp` group module (cli.py imports them)."""
    modules = command_modules()
    assert {"cli_bench", "cli_compile", "cli_demo", "cli_explain", "cli_reports", "cli_rules"} <= set(modules)
    for name in modules + ["cli_options"]:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.level == 1 and node.module == "cli"), f"{name} imports from .cli"
                assert node.module not in ("onnxlrp.cli", "onnxlrp") or node.level, f"{name}: {node.module}"
            if isinstance(node, ast.Import):
                assert all(a.name != "onnxlrp.cli" for a in node.names), name


def test_every_module_registers_its_commands():
    group = click.Group("g")
    register_commands(group)
    assert set(group.commands) == set(main.commands) and COMMANDS <= set(group.commands)
    with pytest.raises(RuntimeError, match="defined twice"):
        register_commands(group)


@pytest.mark.parametrize("module", ["onnxlrp.cli", "onnxlrp"])
def test_python_dash_m_has_every_command(module):
    """`python -m onnxlrp.cli` ran cli.py as __main__ while the command modules attached themselves to a second
    copy of it: bench, bias-table and profile were missing."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(main.commands)
