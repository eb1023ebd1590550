"""Where the data shipped in the wheel (rules/, models/ as onnxlrp._rules, onnxlrp._models) lies on disk."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional


def data_folder(package: str, probe: str) -> Optional[Path]:
    """The folder of a data package that holds the file `probe`, None when it is not installed.

    The data folders have no __init__.py (namespace packages): resources.files() then gives a MultiplexedPath whose
    str() is not a path, but joining a file name onto it gives a real pathlib.Path.
    """
    try:
        entry = Path(str(resources.files(package).joinpath(probe)))
    except (ModuleNotFoundError, TypeError, ValueError):
        return None
    return entry.parent if entry.is_file() else None
