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


def shape_option(fn):
    """--shape: compile the model for one input size (its dynamic dims fixed)."""
    return click.option("--shape", "shapes", multiple=True, metavar="[NAME=]D0,D1,...",
                        help="Compile for this input size (repeatable, one per input; -1 keeps an axis dynamic), "
                             "for ops that need a static size.")(fn)


def parse_model_shapes(model: str, values: Sequence[str]) -> Optional[dict]:
    """--shape values into {input name: dims} for the model's inputs (-1 keeps an axis dynamic)."""
    if not values:
        return None
    from .graph import load_model
    from .specialise import graph_input_names
    names = graph_input_names(load_model(model))
    shapes = {}
    for item in values:
        name, _, dims = item.rpartition("=")
        if not name:
            if len(names) != 1:
                raise OnnxLrpError(f"the model has {len(names)} inputs ({', '.join(names)}): use --shape NAME=DIMS")
            name = names[0]
        shapes[name] = parse_ints(dims, "--shape")
    return shapes


def parse_ints(text: str, option: str, count: Optional[int] = None) -> list:
    """Comma-separated ints of an option ('1,3,48,192'), `count` of them when given."""
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise OnnxLrpError(f"{option} expects comma-separated integers, got {text!r}") from None
    if not values or (count is not None and len(values) != count):
        raise OnnxLrpError(f"{option} expects {count or 'some'} comma-separated integers, got {text!r}")
    return values


def mask_options(fn):
    """--region, --channel, --anchor, --mask: explain the sum of a dense output over a mask (see targets.py)."""
    fn = click.option("--mask", "mask_file", default=None, type=click.Path(dir_okay=False),
                      help="Explain sum(M * output) for the mask M in this .npy (shaped like the explained output, "
                           "or without its batch axis).")(fn)
    fn = click.option("--anchor", default=None, metavar="A,C",
                      help="Explain entry C of anchor A of a detection output (N, C, A) or (N, A, C); YOLOv8's "
                           "class k is entry 4 + k.")(fn)
    fn = click.option("--channel", default=None, type=int,
                      help="Explain the sum of one channel (axis 1) of the output (with --region: over it).")(fn)
    fn = click.option("--region", default=None, metavar="Y0,Y1,X0,X1",
                      help="Explain the sum of the output map over rows Y0..Y1-1 and columns X0..X1-1.")(fn)
    return fn


def mask_arguments(region: Optional[str], channel: Optional[int], anchor: Optional[str],
                   mask_file: Optional[str]) -> dict:
    """The explain() keyword arguments of the mask options."""
    arguments: dict = {}
    if region is not None:
        arguments["region"] = parse_ints(region, "--region", 4)
    if channel is not None:
        arguments["channel"] = channel
    if anchor is not None:
        arguments["anchor"] = tuple(parse_ints(anchor, "--anchor", 2))
    if mask_file is not None:
        import numpy as np
        try:
            arguments["target_mask"] = np.load(mask_file, allow_pickle=False)
        except Exception as exc:
            raise OnnxLrpError(f"cannot read the --mask file {mask_file} (a .npy array): "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return arguments
