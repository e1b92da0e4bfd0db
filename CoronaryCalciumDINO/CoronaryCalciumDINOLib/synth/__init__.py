"""Synthetic non-contrast cardiac CT studies with per-artery calcium labels."""

from __future__ import annotations

from .generator import SynthResult, generate_study, render_study, study_id, write_studies  # noqa: F401
