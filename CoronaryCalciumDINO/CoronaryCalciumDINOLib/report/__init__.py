"""Reports: the JSON contract, CSV tables and pictures."""

from __future__ import annotations

from .tables import build_report, score_table_rows, write_json, write_score_csv  # noqa: F401
