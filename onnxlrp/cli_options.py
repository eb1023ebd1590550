"""What the CLI's command modules share: the command class, common options and the helpers behind them.

Command modules (`cli_<group>.py`) import from here and from the library, never from `cli.py`: `cli.py` imports
them (see `onnxlrp.cli.register_commands`), so the imports point one way only.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import click

from .errors import OnnxLrpError

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3


class Command(click.Command):
    """The click command class of every onnxlrp command (where behaviour they all share goes)."""


command = functools.partial(click.command, cls=Command)


def parse_sets(values: Sequence[str]) -> dict:
    """--set KEY=VALUE pairs into a params dict (values parsed by the composite loader)."""
    params = {}
    for item in values:
        if "=" not in item:
            raise OnnxLrpError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = value.strip()
    return params


composite_option = click.option("--composite", "-c", default="epsilon_plus", show_default=True,
                                help="Built-in composite name or path to a TOML composite.")
set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override a composite parameter (repeatable), e.g. --set low=-2.1")
output_option = click.option("--output", "output_name", default=None, help="Graph output to explain.")
format_option = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default=None,
                             help="Output format [default: table on a terminal, csv when piped].")


def model_argument(fn):
    """MODEL: a path (a folder or a missing file is named in one line by load_model, not by click)."""
    return click.argument("model", type=click.Path())(fn)


def input_option(fn):
    """--input / -i FILE: the batch to explain."""
    return click.option("--input", "-i", "input_file", required=True,
                        help=".npy, .npz or image (.png, .jpg) with the batch.")(fn)


def target_option(fn):
    """--target / -t K: the class to explain, one or one per sample."""
    return click.option("--target", "-t", "targets", multiple=True, type=int,
                        help="Class to explain (one, or one per sample).")(fn)


def image_options(fn):
    """--size, --mean, --std: how an image --input (.png, .jpg) is preprocessed into a batch of one."""
    fn = click.option("--std", default=None, metavar="S[,S,S]", help="Image input: divide by this per channel.")(fn)
    fn = click.option("--mean", default=None, metavar="M[,M,M]",
                      help="Image input: subtract this per channel (after scaling pixels to [0, 1]).")(fn)
    fn = click.option("--size", default=None, metavar="H,W",
                      help="Image input: resize to H,W (or one int); default: the model's static size.")(fn)
    return fn


def read_inputs(explainer, input_file: str, size: Optional[str], mean: Optional[str], std: Optional[str]) -> dict:
    """The batch in input_file (.npy, .npz or an image preprocessed for the explainer's single input)."""
    from .inputs import load_inputs, options_for_shape, parse_floats, parse_size
    shape = explainer.inputs[0].shape if len(explainer.inputs) == 1 else []
    options = options_for_shape(shape, parse_size(size), parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    return load_inputs(input_file, [i.name for i in explainer.inputs], image=options)


def target_argument(targets: Sequence[int]):
    """The --target values as Explainer.explain's target: None, one int, or a list."""
    return None if not targets else (targets[0] if len(targets) == 1 else list(targets))
