"""Writing models: inline below 2 GB, with an external data file beside the model above."""
from __future__ import annotations

from pathlib import Path

import onnx

from .errors import OnnxLrpError

PROTOBUF_LIMIT = 2 * 1024 ** 3 - 1024 ** 2


def save_model(model: onnx.ModelProto, path: str) -> None:
    """Save a model; one that is too large for a single protobuf gets its tensors in '<name>.data' beside it."""
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise OnnxLrpError(f"folder {target.parent} does not exist")
    large = model.ByteSize() > PROTOBUF_LIMIT if _size_known(model) else True
    try:
        if large:
            onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=target.name + ".data", size_threshold=1024)
        else:
            onnx.save_model(model, str(target))
    except OSError as exc:
        raise OnnxLrpError(f"cannot write {target}: {exc.strerror}") from None


def _size_known(model: onnx.ModelProto) -> bool:
    """ByteSize() works below 2 GB; above, protobuf may raise: then treat the model as large."""
    try:
        model.ByteSize()
        return True
    except Exception:
        return False
