"""The four coronary arteries the model scores, in its output order (the one definition; everything imports it)."""

from __future__ import annotations

#: Vessel keys in model output order: right coronary, left main, left anterior descending, left circumflex.
VESSELS: tuple[str, ...] = ("rca", "lm", "lad", "lcx")
