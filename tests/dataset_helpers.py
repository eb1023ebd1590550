"""Shared pieces of the data-set tests: the shipped digits CNN, digits as arrays, PNG folders and Parquet files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "models" / "digits_cnn.onnx"


def digits(n: int = 300) -> tuple:
    """The first n scikit-learn digits as (N, 1, 8, 8) float32 in [0, 1], and their labels."""
    from sklearn.datasets import load_digits
    data = load_digits()
    return (data.data[:n] / 16).astype(np.float32).reshape(-1, 1, 8, 8), data.target[:n].astype(np.int64)


def read_rows(folder: Path):
    """Every row of a run's shards (as pandas, pyarrow or Spark would read the folder), in data-set order."""
    import pyarrow.dataset as pads
    return pads.dataset(str(folder), format="parquet").to_table().sort_by("index")


def relevance_matrix(table, column: str = "relevance/input") -> np.ndarray:
    """A list column of relevance as an (N, values) array."""
    return table.column(column).combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)


def write_pixels_parquet(path: Path, x: np.ndarray, labels: np.ndarray, broken: dict) -> None:
    """x as a Parquet list<float> column 'pixels' (row i replaced by broken[i] where given) with a 'label' column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [broken.get(i, x[i].reshape(-1)).tolist() for i in range(len(x))]
    table = pa.table({"pixels": pa.array(rows, pa.list_(pa.float32())), "label": pa.array(labels, pa.int64())})
    pq.write_table(table, str(path), row_group_size=50)


def write_png_folder(root: Path, x: np.ndarray, labels: np.ndarray) -> list:
    """One grey 8x8 PNG per digit under root/<label>/NNN.png; returns the pixel arrays the files hold (uint8)."""
    from PIL import Image
    pixels = []
    for i, (image, label) in enumerate(zip(x, labels)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        grey = np.round(image[0] * 255).astype(np.uint8)
        Image.fromarray(grey).save(folder / f"{i:03d}.png")
        pixels.append(grey)
    return pixels
