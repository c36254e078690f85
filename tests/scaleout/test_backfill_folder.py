"""Folder backfill: every file queued once, a checkpoint that lets a re-run resume, ``--since``."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from ecgcad.context import AppContext
from ecgcad.db.models import Result
from ecgcad.pipeline.backfill import backfill_folder, get_marker, walk_sorted
from tests.helpers import drain
from tests.scaleout.conftest import ecg_copies


def _archive(root: Path, n: int) -> list[Path]:
    paths = []
    for i, data in enumerate(ecg_copies(n)):
        p = root / f"site{i % 2}" / f"ecg{i:03d}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_walk_order_matches_the_checkpoint_comparison(tmp_path: Path) -> None:
    for rel in ("a/z.dcm", "a/b/c.dcm", "a-c.dcm", "b.dcm"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    parts = [p.relative_to(tmp_path).parts for p in walk_sorted(tmp_path)]
    assert parts == sorted(parts)


def test_rerun_resumes_after_the_checkpoint_and_scores_each_file_once(
    make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx = make_ctx()
    root = tmp_path / "archive"
    _archive(root, 5)
    first = backfill_folder(ctx, root, limit=3)
    assert (first.seen, first.queued) == (3, 3)
    assert get_marker(ctx, f"backfill:folder:{root.resolve()}")["done_through"] == ["site0", "ecg004.dcm"]
    second = backfill_folder(ctx, root)
    assert (second.seen, second.queued) == (2, 2), "the re-run starts after the checkpoint"
    third = backfill_folder(ctx, root)
    assert third.seen == 0
    drain(ctx)
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(Result)).scalar_one() == 5


def test_since_skips_older_files(make_ctx: Callable[..., AppContext], tmp_path: Path) -> None:
    ctx = make_ctx()
    root = tmp_path / "archive"
    old, new = _archive(root, 2)
    ts = dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()
    os.utime(old, (ts, ts))
    report = backfill_folder(ctx, root, since=dt.date(2023, 1, 1))
    assert (report.seen, report.queued, report.skipped) == (2, 1, 1)
