"""Reading user data files (.npy, .npz, images) into the arrays a model's inputs expect."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageOptions:
    """How an image file becomes a batch of one: resize, scale to [0, 1], normalise per channel, lay out."""

    size: Optional[tuple] = None        # (H, W); None keeps the image's size
    mean: Optional[tuple] = None        # per channel (or one value), subtracted after scaling to [0, 1]
    std: Optional[tuple] = None         # per channel (or one value), divided by after subtracting the mean
    channels: int = 3                   # 1: grey, 3: RGB, 4: RGBA
    channels_last: bool = False         # (1, H, W, C) instead of (1, C, H, W)


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
    """Image options matching a model input's declared shape: channels, layout, and size when it is static."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    channels_last, channels, spatial = False, 3, None
    if len(dims) == 4:
        first, last = dims[1], dims[3]
        channels_last = last is not None and last <= 4 and (first is None or first > 4)
        channels = (last if channels_last else first) or 3
        spatial = (dims[1], dims[2]) if channels_last else (dims[2], dims[3])
    elif len(dims) == 3:
        channels, spatial = 1, (dims[1], dims[2])
    if size is None and spatial is not None and None not in spatial:
        size = spatial
    return ImageOptions(size=size, mean=mean, std=std, channels=channels if channels in (1, 3, 4) else 3,
                        channels_last=channels_last)


def load_image(path, options: ImageOptions) -> np.ndarray:
    """An image file (a path, or an open binary file) as a float32 batch of one: (1, C, H, W) (or (1, H, W, C)),
    scaled to [0, 1], normalised."""
    from PIL import Image, UnidentifiedImageError
    file = path if hasattr(path, "read") else Path(path)
    try:
        with Image.open(file) as image:
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[options.channels]
            image = image.convert(mode)
            if options.size is not None:
                image = image.resize((options.size[1], options.size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
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
    if not options.channels_last:
        array = np.transpose(array, (2, 0, 1))
    return np.ascontiguousarray(array[None], dtype=np.float32)


def load_inputs(path: str, input_names: Sequence[str], image: Optional[ImageOptions] = None) -> dict:
    """Load .npy (one input), .npz (arrays by input name; a single array fits a single-input model) or an image."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"input file not found: {file}")
    suffix = file.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if len(input_names) != 1:
            raise InputError(f"an image file fits a single-input model; this one has {len(input_names)} inputs")
        return {input_names[0]: load_image(str(file), image or ImageOptions())}
    try:
        if suffix == ".npy":
            data = {"": np.load(file, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                data = {k: archive[k] for k in archive.files}
        else:
            raise InputError(f"input file {file} must be .npy, .npz or an image ({', '.join(IMAGE_SUFFIXES)}), "
                             f"got {suffix or 'no suffix'!r}")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read input file {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if set(input_names) <= set(data):
        return {name: data[name] for name in input_names}
    if len(input_names) == 1 and len(data) == 1:
        return {input_names[0]: next(iter(data.values()))}
    raise InputError(f"input file {file} holds {', '.join(repr(k) for k in data if k) or 'one unnamed array'}; "
                     f"the model needs {', '.join(map(repr, input_names))} (save them by name in an .npz)")


def load_feature_names(path: str) -> list:
    """Feature names from a text file, one per line (blank lines at the end ignored)."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read feature names from {file}: {getattr(exc, 'strerror', None) or exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]
