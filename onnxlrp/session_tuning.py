"""onnxruntime session settings that keep an explanation's memory close to the forward pass's."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

import onnx

# dense weights above this many bytes are not prepacked (see tune_options)
PREPACK_LIMIT_BYTES = 256 * 2 ** 20
PREPACK_KEY = "session.disable_prepacking"


def dense_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the constant matrices that Gemm/MatMul nodes read."""
    sizes = {t.name: len(t.raw_data) or 4 * len(t.float_data) for t in model.graph.initializer}
    read = {name for node in model.graph.node if node.op_type in ("Gemm", "MatMul") for name in node.input[:2]}
    return sum(sizes.get(name, 0) for name in read)


def tune_options(options, model: onnx.ModelProto) -> None:
    """Turn off weight prepacking when the dense weights are large, unless the caller chose.

    The compiled graph multiplies by every dense weight twice, forward (x W) and transposed (s W^T); onnxruntime
    prepacks a constant matrix once per orientation, so a large classifier (VGG-16: 470 MB) would be held three
    times. Prepacking pays off for small matrices at larger batches; for large ones the multiply itself dominates."""
    try:
        options.get_session_config_entry(PREPACK_KEY)
        return  # set by the caller
    except RuntimeError:
        pass
    if dense_weight_bytes(model) > PREPACK_LIMIT_BYTES:
        options.add_session_config_entry(PREPACK_KEY, "1")


# models below this size leave too little behind to be worth a full garbage collection (whose cost grows with every
# live object of the process, not with the model: thousands of small Explainers would pay it each time)
RELEASE_LIMIT_BYTES = 64 * 2 ** 20


def release_freed_memory(model_bytes: int) -> None:
    """For a model of at least RELEASE_LIMIT_BYTES: collect garbage and hand freed heap pages back to the OS (glibc),
    so that the transient copies of a large model made while the session was built do not stay resident."""
    if model_bytes < RELEASE_LIMIT_BYTES:
        return
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
