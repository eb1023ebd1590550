"""Explaining whole data sets: readers (image folders, .npy/.npz, Parquet), the local and Ray engines, Parquet out."""
from .job import DatasetRun, explain_dataset, run_dataset  # noqa: F401

__all__ = ["explain_dataset", "run_dataset", "DatasetRun"]
