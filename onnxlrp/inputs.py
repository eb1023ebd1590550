"""Reading user data files (.npy, .npz, images) into the arrays a model's inputs expect."""
from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import numpy as np

from .errors import InputError


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# input budgets: what a file declares is checked before anything of that size is read, decoded or allocated
MAX_INPUT_BYTES = 1 << 30            # all arrays of an .npy / .npz file together (--max-input-mb)
MAX_IMAGE_PIXELS = 1 << 25           # 33.5 Mpx (an 8K picture), an image as read and as resized (--size)
MAX_FEATURE_NAMES_BYTES = 16 << 20   # a --feature-names file
MAX_NPZ_MEMBERS = 10_000


def _size_text(nbytes: int) -> str:
    """Bytes as '6 GB' / '400 MB' / '12 KB' (binary units)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"


@dataclass(frozen=True)
class ImageOptions:
    """How an image file becomes a batch of one: resize, scale to [0, 1], normalise per channel, lay out."""

    size: Optional[tuple] = None        # (H, W); None keeps the image's size
    mean: Optional[tuple] = None        # per channel (or one value), subtracted after scaling to [0, 1]
    std: Optional[tuple] = None         # per channel (or one value), divided by after subtracting the mean
    channels: int = 3                   # 1: grey, 3: RGB, 4: RGBA
    channels_last: bool = False         # (1, H, W, C) instead of (1, C, H, W)
    layout: str = "image"               # "image": (1, C, H, W) or (1, H, W, C); "grid": (1, H, W); "flat": (1, H*W*C)


def parse_size(text: Optional[str]) -> Optional[tuple]:
    """'H,W' or one int (square) -> (H, W); None stays None."""
    if text is None or text == "":
        return None
    try:
        values = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--size expects H,W or one integer, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise InputError(f"--size expects H,W or one positive integer, got {text!r}")
    if values[0] * values[1] > MAX_IMAGE_PIXELS:
        raise InputError(f"--size {values[0]},{values[1]} is {values[0] * values[1] / 1e6:.4g} Mpx, beyond the image "
                         f"budget of {MAX_IMAGE_PIXELS / 1e6:.3g} Mpx")
    return values


def parse_floats(text: Optional[str], what: str) -> Optional[tuple]:
    """'0.485,0.456,0.406' or one float -> a tuple of floats; None stays None."""
    if text is None or text == "":
        return None
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise InputError(f"{what} expects one float or comma-separated floats, got {text!r}") from None


def options_for_shape(shape: Sequence, size: Optional[tuple] = None, mean: Optional[tuple] = None,
                      std: Optional[tuple] = None) -> ImageOptions:
    """Image options matching a model input's declared shape: channels, layout, and size when it is static. A flat
    input (N, F) takes a grey image of F pixels, square when F is a square number."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    channels_last, channels, spatial, layout = False, 3, None, "image"
    if len(dims) == 4:
        first, last = dims[1], dims[3]
        channels_last = last is not None and last <= 4 and (first is None or first > 4)
        channels = (last if channels_last else first) or 3
        spatial = (dims[1], dims[2]) if channels_last else (dims[2], dims[3])
    elif len(dims) == 3:
        channels, spatial, layout = 1, (dims[1], dims[2]), "grid"
    elif len(dims) == 2:
        channels, layout = 1, "flat"
        side = int(round(dims[1] ** 0.5)) if dims[1] else 0
        spatial = (side, side) if side and side * side == dims[1] else None
    if size is None and spatial is not None and None not in spatial:
        size = spatial
    return ImageOptions(size=size, mean=mean, std=std, channels=channels if channels in (1, 3, 4) else 3,
                        channels_last=channels_last, layout=layout)


_MODE_NAMES = {"1": "black-and-white", "L": "grey", "LA": "grey with alpha", "P": "palette", "RGB": "RGB",
               "RGBA": "RGBA", "CMYK": "CMYK", "I": "32-bit grey", "I;16": "16-bit grey", "F": "float grey"}


def load_image(path, options: ImageOptions, notes: Optional[list] = None) -> np.ndarray:
    """An image file (a path, or an open binary file) as a float32 batch of one: (1, C, H, W) (or (1, H, W, C),
    (1, H, W), (1, H*W*C)), scaled to [0, 1], normalised. Every change to the picture (size, colours) is appended
    to notes as one sentence."""
    from PIL import Image, UnidentifiedImageError
    file = path if hasattr(path, "read") else Path(path)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[options.channels]
    if options.size is not None and options.size[0] * options.size[1] > MAX_IMAGE_PIXELS:
        height, width = options.size
        raise InputError(f"the model's input needs a {height}x{width} image ({height * width / 1e6:.4g} Mpx), beyond "
                         f"the image budget of {MAX_IMAGE_PIXELS / 1e6:.3g} Mpx")
    try:
        with warnings.catch_warnings():  # Pillow's decompression-bomb warning becomes our one error line
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image_file = Image.open(file)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                declared = re.search(r"\((\d+) pixels\)", str(exc))
                pixels = f"{int(declared.group(1)) / 1e6:.4g} Mpx" if declared else "more pixels than Pillow allows"
                raise InputError(f"image {file} declares {pixels}, beyond the image budget of "
                                 f"{MAX_IMAGE_PIXELS / 1e6:.3g} Mpx (nothing was decoded)") from None
        with image_file as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:  # declared in the header; nothing is decoded yet
                raise InputError(f"image {file} declares {width}x{height} pixels ({width * height / 1e6:.4g} Mpx), "
                                 f"beyond the image budget of {MAX_IMAGE_PIXELS / 1e6:.3g} Mpx (nothing was decoded)")
            original_mode, original_size = image.mode, image.size
            image = image.convert(mode)
            if options.size is not None and image.size != (options.size[1], options.size[0]):
                image = image.resize((options.size[1], options.size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    changes = []
    if (original_size[1], original_size[0]) != array.shape[:2]:
        changes.append(f"resized from {original_size[1]}x{original_size[0]} to {array.shape[0]}x{array.shape[1]}")
    if original_mode != mode and not (original_mode in ("P", "1") and mode == "RGB"):
        changes.append(f"converted from {_MODE_NAMES.get(original_mode, original_mode)} to "
                       f"{_MODE_NAMES[mode]}")
    array = array.reshape(array.shape[0], array.shape[1], -1)  # (H, W, C)
    for name, values in (("mean", options.mean), ("std", options.std)):
        if values is not None and len(values) not in (1, array.shape[2]):
            raise InputError(f"--{name} has {len(values)} values, the image has {array.shape[2]} channels")
    if options.mean is not None:
        array = array - np.asarray(options.mean, dtype=np.float32)
    if options.std is not None:
        std = np.asarray(options.std, dtype=np.float32)
        if np.any(std == 0):
            raise InputError("--std must not contain 0")
        array = array / std
    if options.layout == "flat":
        array = array.reshape(1, -1)
        changes.append(f"flattened to {array.shape[1]} values")
    elif options.layout == "grid":
        array = array[None, :, :, 0]
    else:
        array = (array if options.channels_last else np.transpose(array, (2, 0, 1)))[None]
    if changes and notes is not None:
        notes.append(f"image {file.name} {', '.join(changes)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def parse_keys(values: Sequence[str], input_names: Sequence[str]) -> dict:
    """--key words into {model input: array name}: 'NAME' for a single-input model, or 'INPUT=NAME' each."""
    keys = {}
    for value in values:
        inp, sep, key = str(value).rpartition("=")
        if not sep:
            if len(input_names) != 1:
                raise InputError(f"the model has {len(input_names)} inputs ({', '.join(input_names)}): "
                                 f"use --key INPUT=NAME for each, got --key {value}")
            inp = input_names[0]
        if inp not in input_names:
            raise InputError(f"--key {value}: the model has no input {inp!r} (inputs: {', '.join(input_names)})")
        if not key:
            raise InputError(f"--key {value}: no array name given")
        keys[inp] = key
    return keys


def read_npy(stream: BinaryIO, where: str, max_bytes: int) -> np.ndarray:
    """The array of an open .npy stream: its header's shape and dtype are checked against max_bytes before any
    data is read, then exactly the declared bytes are read (a member that decompresses to more is never inflated
    beyond them); Python objects (pickles) are refused."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            shape, fortran, dtype = fmt._read_array_header(stream, version)  # 3.0: utf-8 field names
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InputError(f"{where} is not a valid .npy array ({' '.join(str(exc).split())[:120]})") from None
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects (a pickle), which are not read: save numeric arrays")
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes:
        raise InputError(f"{where} declares an array of shape {tuple(shape)} {dtype} ({_size_text(nbytes)}), beyond "
                         f"the input budget of {_size_text(max_bytes)} (--max-input-mb)")
    buffer = bytearray(nbytes)
    view, filled = memoryview(buffer), 0
    while filled < nbytes:
        got = stream.readinto(view[filled:])
        if not got:
            raise InputError(f"{where} is truncated: its header declares {nbytes} bytes of data, it holds {filled}")
        filled += got
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def read_npz(file: Path, max_bytes: int) -> dict:
    """The arrays of an .npz archive by name: each member's declared (decompressed) size and its .npy header are
    checked before it is read, and all of them together stay within max_bytes."""
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"input file {file} is not a valid .npz archive ({exc})") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_NPZ_MEMBERS:
            raise InputError(f"input file {file} holds {len(members)} arrays, more than {MAX_NPZ_MEMBERS}")
        data, left = {}, max_bytes
        for member in members:
            name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
            where = f"array {name!r} of {file}"
            if not member.filename.endswith(".npy"):
                raise InputError(f"input file {file} holds {member.filename!r}, which is no .npy array")
            if member.file_size > left + 4096:  # the declared decompressed size, header included
                raise InputError(f"{where} declares {_size_text(member.file_size)} decompressed, beyond the input "
                                 f"budget of {_size_text(max_bytes)} (--max-input-mb)")
            try:
                with archive.open(member) as stream:
                    data[name] = read_npy(stream, where, left)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
                raise InputError(f"cannot read {where} ({' '.join(str(exc).split())[:120]})") from None
            left -= data[name].nbytes
    return data


def load_inputs(path: str, input_names: Sequence[str], image: Optional[ImageOptions] = None,
                keys: Optional[dict] = None, notes: Optional[list] = None,
                max_bytes: int = MAX_INPUT_BYTES) -> dict:
    """Load .npy (one input), .npz (arrays by input name, or chosen by keys {input: array name}; a single array
    fits a single-input model) or an image (its changes appended to notes). What a file declares is checked
    against the budgets (max_bytes for arrays, MAX_IMAGE_PIXELS for images) before it is read."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"input path is a folder, not a file: {file}")
    if not file.is_file():
        raise InputError(f"input file not found: {file}")
    suffix = file.suffix.lower()
    if keys and suffix != ".npz":
        raise InputError(f"--key chooses arrays in an .npz file; {file} is not one")
    if suffix in IMAGE_SUFFIXES:
        if len(input_names) != 1:
            raise InputError(f"an image file fits a single-input model; this one has {len(input_names)} inputs")
        return {input_names[0]: load_image(str(file), image or ImageOptions(), notes)}
    try:
        if suffix == ".npy":
            with open(file, "rb") as stream:
                data = {"": read_npy(stream, f"input file {file}", max_bytes)}
        elif suffix == ".npz":
            data = read_npz(file, max_bytes)
        else:
            raise InputError(f"input file {file} must be .npy, .npz or an image ({', '.join(IMAGE_SUFFIXES)}), "
                             f"got {suffix or 'no suffix'!r}")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read input file {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    held = ", ".join(repr(k) for k in data if k) or "one unnamed array"
    if keys:
        for inp, key in keys.items():
            if key not in data:
                raise InputError(f"input file {file} has no array {key!r} (it holds {held})")
        chosen = {name: keys.get(name, name) for name in input_names}
        missing = [name for name, key in chosen.items() if key not in data]
        if missing:
            raise InputError(f"input file {file} holds {held}; --key names no array for model input "
                             f"{', '.join(map(repr, missing))} (add --key {missing[0]}=NAME)")
        return {name: data[key] for name, key in chosen.items()}
    if set(input_names) <= set(data):
        return {name: data[name] for name in input_names}
    if len(input_names) == 1 and len(data) == 1:
        return {input_names[0]: next(iter(data.values()))}
    hint = "--key NAME" if len(input_names) == 1 else "--key INPUT=NAME for each input"
    raise InputError(f"input file {file} holds {held}; the model needs {', '.join(map(repr, input_names))} "
                     f"(choose with {hint}, or save the arrays by input name)")


def load_feature_names(path: str) -> list:
    """Feature names from a regular text file of at most MAX_FEATURE_NAMES_BYTES, one per line (blank lines at the
    end ignored); a device (/dev/zero), a FIFO or a larger file is refused before it is read."""
    file = Path(path)
    try:
        if not file.is_file():
            what = "not found" if not file.exists() else "not a regular file"
            raise InputError(f"cannot read feature names from {file}: {what}")
        with open(file, "rb") as stream:
            raw = stream.read(MAX_FEATURE_NAMES_BYTES + 1)
        if len(raw) > MAX_FEATURE_NAMES_BYTES:
            raise InputError(f"feature names file {file} is larger than {_size_text(MAX_FEATURE_NAMES_BYTES)}")
        lines = raw.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read feature names from {file}: {getattr(exc, 'strerror', None) or exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]
