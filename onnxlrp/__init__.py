"""onnxlrp: compile any ONNX model into one that also computes its Layer-wise Relevance Propagation."""
__version__ = "0.1.0"

from .compiler import compile, compiled_metadata  # noqa: E402,A001
from .composites import load_composite  # noqa: E402
from .errors import (  # noqa: E402
    ArgumentError, ArgumentTypeError, CompileBudgetError, CompileError, CompositeError, ConservationError, InputError,
    ModelLoadError, OnnxLrpError, RuleParameterError, UnsupportedModelError,
)
from .runtime import Explainer, Explanation  # noqa: E402
from .evaluate import evaluate  # noqa: E402  (the function; the module stays importable as onnxlrp.evaluate)
from .datasets import explain_dataset  # noqa: E402

__all__ = ["compile", "compiled_metadata", "load_composite", "Explainer", "Explanation", "evaluate",
           "explain_dataset", "OnnxLrpError",
           "CompileError", "CompositeError", "InputError", "ModelLoadError", "RuleParameterError",
           "UnsupportedModelError", "CompileBudgetError", "ConservationError", "ArgumentError", "ArgumentTypeError",
           "__version__"]


def __getattr__(name: str):
    """Submodules on first use: `onnxlrp.tables.bias_table(exp)` works right after `import onnxlrp`."""
    import importlib
    import importlib.util
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
