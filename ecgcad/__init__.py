"""ecgcad — scores resting 12-lead ECGs for severe coronary stenosis (RCA, LM, LAD, LCX).

The packages, their layers and the flow of one ECG through them are mapped in ``docs/architecture.md``:
``cli`` (every command) on top; ``service`` and ``api``; ``listeners``, ``pipeline`` and ``context``;
``integration`` (``formats``, ``reports``, ``transport``), ``model`` (inference), ``training`` and ``jobs``;
``db``, ``config``, ``errors``, ``logsetup`` and ``vessels`` at the bottom.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
