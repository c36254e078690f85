"""Formats: the canonical :class:`Ecg`, the readers, signal windowing and the intended-use gate."""
