"""Backfill: ECG/s scoring a folder of DICOM files with ``ecgcad score`` (decode + preprocess + model).

Usage::

    python bench/bench_backfill.py [--quick] [--files 64] [--modes none,auto] [--out DIR]

Writes ``--files`` copies of pydicom's real 12-lead ECG into a folder and runs ``ecgcad score --json`` on it
as a subprocess once per ``[model] optimize`` mode; ``none`` (the reference eager module) is the baseline.
Start-up (imports, model load, warm-up) is measured with a one-file run and subtracted:
ECG/s = (files − 1) / (t(files) − t(1)). Writes ``<out>/backfill.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import pydicom.data

REAL_ECG = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))  # type: ignore[arg-type]


def run_score(folder: Path, config: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ecgcad", "score", "--json", "--config", str(config), str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=_common.ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="24 files")
    parser.add_argument("--files", type=int, default=None, help="files in the folder (default 64)")
    parser.add_argument("--modes", default="none,auto", help="comma-separated [model] optimize modes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    n = args.files or (24 if args.quick else 64)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecgcad-bench-backfill-") as tmpdir:
        tmp = Path(tmpdir)
        one, many = tmp / "one", tmp / "many"
        one.mkdir()
        many.mkdir()
        shutil.copy(REAL_ECG, one / "ecg0.dcm")
        for i in range(n):
            shutil.copy(REAL_ECG, many / f"ecg{i:05d}.dcm")
        for mode in modes:
            config = tmp / f"{mode}.toml"
            config.write_text(f'data_dir = "{tmp / "var"}"\n[model]\ndevice = "cpu"\noptimize = "{mode}"\n')
            t1 = run_score(one, config)
            tn = run_score(many, config)
            rows.append(
                {"mode": mode, "files": n, "startup_s": t1, "total_s": tn, "ecg_per_s": (n - 1) / (tn - t1)}
            )
    base = rows[0]["ecg_per_s"]
    for r in rows:
        r["baseline_ecg_per_s"] = base
        r["ratio_vs_baseline"] = r["ecg_per_s"] / base
    _common.print_table(
        f"backfill: ecgcad score --json on {n} DICOM files (baseline: optimize={modes[0]})",
        [
            ("mode", "optimize", 8),
            ("files", "files", 5),
            ("ecg_per_s", "ECG/s", 8),
            ("baseline_ecg_per_s", "base ECG/s", 10),
            ("ratio_vs_baseline", "× base", 7),
            ("startup_s", "start s", 7),
        ],
        rows,
    )
    print("GPU backfill rows: run bench/gpu.sh on a CUDA machine (device = cuda).")
    path = _common.write_results("backfill", {"quick": args.quick, "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
