"""CLI commands for reports: bias-table, profile (issue 5)."""
from __future__ import annotations
