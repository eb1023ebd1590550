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
    """Settings that keep an explanation session's memory down: onnxruntime's memory pattern off, and weight
    prepacking off when the dense weights are large (unless the caller set session.disable_prepacking).

    The memory pattern is planned on a session's first run and allocated as one block from the second on, on top of
    the arena chunks the first run left resident, so it doubles the working memory (ResNet-50 with gamma, batch 8:
    3530 MiB working with it, 1782 without) for no measurable speed (0.97-1.03x on the compare.py models).
    The compiled graph multiplies by every dense weight twice, forward (x W) and transposed (s W^T); onnxruntime
    prepacks a constant matrix once per orientation, so a large classifier (VGG-16: 470 MB) would be held three
    times. Prepacking pays off for small matrices at larger batches; for large ones the multiply itself dominates."""
    options.enable_mem_pattern = False
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
    """Hand the heap pages freed while the session was built back to the OS (glibc's malloc_trim), after a garbage
    collection for a model of at least RELEASE_LIMIT_BYTES.

    Building a session folds the derived weights (W+, gamma's, flipped kernels) and reorders them for the blocked
    kernels; the transient tensors it frees stay resident in glibc's heap (ResNet-18 with gamma: 255 MiB of a
    493 MiB process) until trimmed. Trimming costs what it releases (about 20 ms for those 255 MiB, well under
    1 ms where there is little), so it is done for every model."""
    if model_bytes >= RELEASE_LIMIT_BYTES:
        gc.collect()
    trim_heap()


def trim_heap() -> None:
    """glibc's malloc_trim(0): free heap pages go back to the OS (a no-op where the C library has no malloc_trim)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
