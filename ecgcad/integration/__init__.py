"""Formats and peers: readers to the canonical :class:`Ecg`, builders of SR / PDF / ORU, and senders."""

from __future__ import annotations

from ecgcad.integration.formats.ecg import LEADS, TARGET_RATE_HZ, TARGET_SAMPLES, Ecg, EcgIdentifiers

__all__ = ["LEADS", "TARGET_RATE_HZ", "TARGET_SAMPLES", "Ecg", "EcgIdentifiers"]
