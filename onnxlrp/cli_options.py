"""What the CLI's command modules share: the command class, common options and the helpers behind them.

Command modules (`cli_<group>.py`) import from here and from the library, never from `cli.py`: `cli.py` imports
them (see `onnxlrp.cli.register_commands`), so the imports point one way only.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import click

from .errors import OnnxLrpError

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3


INTEGERS = re.compile(r"\d+(,\d+)*")
MULTI_VALUE_OPTIONS = ("--target", "-t")  # of commands with a `targets` option: "K", "K,L" or "K L ..." (integers)


def join_multi_values(args: Sequence[str]) -> list:
    """Command-line words with the integers after --target / -t joined into one word: '-t 3 5' -> '-t 3,5'."""
    joined, i = [], 0
    while i < len(args):
        word = args[i]
        joined.append(word)
        i += 1
        if word == "--":
            joined.extend(args[i:])
            break
        if word in MULTI_VALUE_OPTIONS and i < len(args) and INTEGERS.fullmatch(args[i]):
            values = [args[i]]
            i += 1
            while i < len(args) and INTEGERS.fullmatch(args[i]):
                values.append(args[i])
                i += 1
            joined.append(",".join(values))
    return joined


class Command(click.Command):
    """The click command class of every onnxlrp command: --target takes several values (3 5 or 3,5), and the
    command's line in `onnxlrp --help` is its short_help in full (wrapped, never cut with '...')."""

    def parse_args(self, ctx: click.Context, args: list) -> list:
        if any(param.name == "targets" for param in self.params):
            args = join_multi_values(args)
        return super().parse_args(ctx, args)

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help:
            return self.short_help
        return " ".join((self.help or "").split("\n\n")[0].split()).split(". ")[0].rstrip(".")


command = functools.partial(click.command, cls=Command)


def note(message: str) -> None:
    """A one-line note on stderr (stdout stays the command's result: tables, CSV)."""
    click.echo(f"note: {message}", err=True)


def check_output_file(path: Optional[str], option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or a missing parent folder."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise OnnxLrpError(f"cannot write {option} {target}: it is a folder (give a file name)")
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise OnnxLrpError(f"cannot write {option} {target}: folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OnnxLrpError(f"cannot write {option} {target}: folder {folder} is not writable")


def check_output_folder(path: str, option: str) -> None:
    """Refuse, before any work, an output folder that is a file or whose nearest existing parent is not writable."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OnnxLrpError(f"cannot write into {option} {target}: it is a file, not a folder")
    existing = next(p for p in [target, *target.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise OnnxLrpError(f"cannot create {option} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OnnxLrpError(f"cannot write into {option} {target}: folder {existing} is not writable")


def parse_sets(values: Sequence[str]) -> dict:
    """--set KEY=VALUE pairs into a params dict (values parsed by the composite loader)."""
    params = {}
    for item in values:
        if "=" not in item:
            raise OnnxLrpError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = value.strip()
    return params


DEFAULT_COMPOSITE = "epsilon_plus"
composite_option = click.option("--composite", "-c", default=DEFAULT_COMPOSITE, show_default=True,
                                help="Built-in composite name or path to a TOML composite.")
explain_composite_option = click.option(
    "--composite", "-c", default=None,
    help="Built-in composite name or path to a TOML composite [default: epsilon_plus; a compiled MODEL keeps the "
         "composite it was compiled with, and another one is refused].")
set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override a composite parameter (repeatable), e.g. --set low=-2.1")
output_option = click.option("--output", "output_name", default=None, help="Graph output to explain.")
format_option = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default=None,
                             help="Output format [default: table on a terminal, csv when piped].")


def model_argument(fn):
    """MODEL: a path (a folder or a missing file is named in one line by load_model, not by click)."""
    return click.argument("model", type=click.Path())(fn)


def _remember(key: str):
    """An option callback that keeps the value in the click context (read by the helpers below), so that commands
    need no parameter for it."""
    def store(ctx: click.Context, param, value):
        ctx.meta[key] = value
        return value
    return store


max_constant_option = click.option(
    "--max-constant-mb", type=click.FloatRange(min=0, min_open=True), default=None, expose_value=False,
    callback=_remember("onnxlrp.max_constant_mb"), metavar="MB",
    help="Compile budget: the largest constant built from the model's declared shapes [default: 256]; a node "
         "beyond it is refused in one line.")
max_input_option = click.option(
    "--max-input-mb", type=click.FloatRange(min=0, min_open=True), default=None, expose_value=False,
    callback=_remember("onnxlrp.max_input_mb"), metavar="MB",
    help="Input budget: the arrays of an .npy/.npz --input together, as their headers declare, checked before "
         "they are read [default: 1024].")


def constant_budget() -> Optional[int]:
    """--max-constant-mb in bytes, None for the default."""
    value = click.get_current_context().meta.get("onnxlrp.max_constant_mb")
    return None if value is None else max(1, int(value * 2 ** 20))


def input_budget() -> int:
    """--max-input-mb in bytes (MAX_INPUT_BYTES by default)."""
    from .inputs import MAX_INPUT_BYTES
    value = click.get_current_context().meta.get("onnxlrp.max_input_mb")
    return MAX_INPUT_BYTES if value is None else max(1, int(value * 2 ** 20))


def input_options(fn):
    """--input / -i FILE: the batch to explain, --key: which arrays of an .npz file, the input budget, the image
    options and the compile budget (commands that read an input compile the model too)."""
    fn = max_constant_option(fn)
    fn = max_input_option(fn)
    fn = image_options(fn)
    fn = click.option("--key", "keys", multiple=True, metavar="NAME|INPUT=NAME",
                      help=".npz input: the array to explain (NAME), or the array for each model input "
                           "(INPUT=NAME, repeatable) [default: the arrays named like the model's inputs].")(fn)
    return click.option("--input", "-i", "input_file", required=True,
                        help=".npy, .npz or image (.png, .jpg) with the batch.")(fn)


def target_option(fn):
    """--target / -t K ...: the class to explain, one or one per sample (3 5, 3,5 or -t 3 -t 5)."""
    return click.option("--target", "-t", "targets", multiple=True, metavar="K ...",
                        help="Class to explain: one for every sample, or one per sample (--target 3 5, "
                             "--target 3,5) [default: the predicted class].")(fn)


def parse_targets(values: Sequence[str]):
    """The --target words as Explainer.explain's target: None, one int, or a list of ints."""
    targets = []
    for value in values:
        for part in str(value).split(","):
            try:
                targets.append(int(part))
            except ValueError:
                raise OnnxLrpError(f"--target expects class numbers (--target 3, --target 3 5 or --target 3,5), "
                                   f"got {value!r}") from None
    return None if not targets else (targets[0] if len(targets) == 1 else targets)


def image_options(fn):
    """--size, --mean, --std: how an image --input (.png, .jpg) is preprocessed into a batch of one."""
    fn = click.option("--std", default=None, metavar="S[,S,S]", help="Image input: divide by this per channel.")(fn)
    fn = click.option("--mean", default=None, metavar="M[,M,M]",
                      help="Image input: subtract this per channel (after scaling pixels to [0, 1]).")(fn)
    fn = click.option("--size", default=None, metavar="H,W",
                      help="Image input: resize to H,W (or one int); default: the model's static size.")(fn)
    return fn


def read_inputs(explainer, input_file: str, keys: Sequence[str], size: Optional[str], mean: Optional[str],
                std: Optional[str]) -> dict:
    """The batch in input_file (.npy, .npz or an image preprocessed for the explainer's single input); every
    change made to an image (resized, converted, flattened) is printed as a note."""
    from .inputs import load_inputs, options_for_shape, parse_floats, parse_keys, parse_size
    names = [i.name for i in explainer.inputs]
    shape = explainer.inputs[0].shape if len(explainer.inputs) == 1 else []
    options = options_for_shape(shape, parse_size(size), parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    notes: list = []
    inputs = load_inputs(input_file, names, image=options, keys=parse_keys(keys, names), notes=notes,
                         max_bytes=input_budget())
    for message in notes:
        note(message)
    return inputs
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
