"""The onnxlrp command line: the `onnxlrp` group, its error handling, and the command modules it registers.

Every onnxlrp error becomes one line on stderr and a non-zero exit. The commands live in modules of their own,
`onnxlrp/cli_<group>.py`, one per command group; each defines its click commands with the helpers of
`cli_options.py` and lists them in a module-level `COMMANDS` tuple. Adding a command group means adding one such
module: `register_commands` finds every `cli_*` module of the package (but `cli_options`) and attaches its commands.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import Optional, Sequence

import click

from .cli_options import EXIT_INTERNAL, EXIT_USER_ERROR
from .errors import OnnxLrpError, one_line

SHARED_MODULES = ("cli_options",)


class _UsageLine(click.UsageError):
    """A usage error shown as one line, like every other error: 'error: ... (see 'onnxlrp explain --help')'."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {one_line(self.message.rstrip('.'))}{hint}", err=True)


def _one_line(exc: click.UsageError) -> _UsageLine:
    """The same usage error, shown in one line."""
    return _UsageLine(exc.format_message(), exc.ctx)


class _Group(click.Group):
    """A click group that turns exceptions into one readable line and an exit code."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None
        except OnnxLrpError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # output piped into head & co.: the reader has what it wanted
            _discard_stdout()
            ctx.exit(0)
        except MemoryError:
            click.echo("error: out of memory (try a smaller batch)", err=True)
            ctx.exit(EXIT_INTERNAL)
        except Exception as exc:  # never a bare traceback
            if os.environ.get("ONNXLRP_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc).strip() else ""
            click.echo(f"internal error: {type(exc).__name__}: {one_line(first)} "
                       f"(set ONNXLRP_DEBUG=1 for the traceback)", err=True)
            ctx.exit(EXIT_INTERNAL)


def _discard_stdout() -> None:
    """Point stdout at the null device, so that flushing what is still buffered at exit raises nothing."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # no file descriptor behind stdout (tests)
        pass


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxlrp")
def main() -> None:
    """onnxlrp: compile ONNX models into models that explain themselves with LRP."""


def command_modules() -> list:
    """Names of the package's command modules: every onnxlrp.cli_<group> module but the shared ones, sorted."""
    package = os.path.dirname(os.path.abspath(__file__))
    return sorted(m.name for m in pkgutil.iter_modules([package])
                  if m.name.startswith("cli_") and m.name not in SHARED_MODULES)


def register_commands(group: click.Group) -> None:
    """Attach the COMMANDS of every command module to group (a command name defined twice is an error)."""
    for name in command_modules():
        module = importlib.import_module(f"{__package__}.{name}")
        commands = getattr(module, "COMMANDS", None)
        if not commands:
            raise RuntimeError(f"onnxlrp.{name} defines no COMMANDS tuple")
        for cmd in commands:
            if cmd.name in group.commands:
                raise RuntimeError(f"command {cmd.name!r} of onnxlrp.{name} is defined twice")
            group.add_command(cmd)


register_commands(main)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for tests: run the CLI and return its exit code."""
    try:
        code = main.main(args=list(argv) if argv is not None else None, standalone_mode=False)
        return code if isinstance(code, int) else 0  # click hands back ctx.exit(code) as the return value
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
