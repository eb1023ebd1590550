"""CLI command: onnxlrp bench (issue 6)."""
from __future__ import annotations
