"""Decode benchmark: one real 12-lead DICOM ECG, ecgcad's reader against plain pydicom.

Run with ``.venv/bin/python bench/bench_decode.py``. Prints the median time per decode of pydicom's real
Mortara ECG (``waveform_ecg.dcm``, 1000 Hz, rhythm + median groups) for:

- baseline: ``pydicom.dcmread`` + ``Dataset.waveform_array(0)`` (raw physical values, µV, float64, no lead
  mapping, no unit conversion);
- ecgcad: :func:`ecgcad.integration.formats.readers.decode` (group choice, lead mapping by code, mV float32,
  identifiers) — the target is under 5 ms;
- the other formats, for scale (MUSE XML, aECG XML, HL7 ORU with ED and with an MA waveform).
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402

from ecgcad.integration.formats.readers import decode  # noqa: E402
from ecgcad.testing import ecg_writers as w  # noqa: E402

TARGET_MS = 5.0


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up (imports, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def main() -> int:
    """Run the benchmark and print a table; exit 1 if the DICOM decode misses the target."""
    real = w.real_dicom_ecg_bytes()

    def baseline() -> object:
        ds = pydicom.dcmread(io.BytesIO(real))
        return ds.waveform_array(0)

    base_ms = _median_ms(baseline, 200)
    ours_ms = _median_ms(lambda: decode(real), 200)
    rows = [
        ("pydicom dcmread + waveform_array (baseline)", base_ms),
        ("ecgcad decode, real DICOM ECG", ours_ms),
    ]
    x = w.real_signal(500.0)
    for label, data in (
        ("ecgcad decode, MUSE XML (8 leads)", w.write_muse_xml(x, 500)),
        ("ecgcad decode, aECG XML (12 leads)", w.write_aecg_xml(x, 500)),
        ("ecgcad decode, HL7 ORU ED(DICOM), MLLP", w.write_hl7_oru_ed(real, mllp=True)),
        ("ecgcad decode, HL7 ORU CD/TS/MA", w.write_hl7_oru_waveform(x, 500)),
    ):
        rows.append((label, _median_ms(lambda d=data: decode(d), 30)))

    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'median ms':>9}  {'vs baseline':>11}")
    for label, ms in rows:
        print(f"{label:<{width}}  {ms:9.3f}  {ms / base_ms:10.2f}x")
    ok = ours_ms < TARGET_MS
    print(f"\nDICOM decode {ours_ms:.3f} ms — target < {TARGET_MS} ms: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
