"""ecgcad — scores resting 12-lead ECGs for severe coronary stenosis (RCA, LM, LAD, LCX).

The package is split as described in ARCHITECTURE.md: ``listeners`` (network servers), ``integration``
(formats and peers), ``model`` (Net1D and prediction), ``jobs`` (queue and worker), ``db`` (SQLAlchemy
models and migrations) and ``api`` (FastAPI admin API and dashboard).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
