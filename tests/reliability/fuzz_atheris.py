"""Coverage-guided fuzzing of the decoders with atheris (not run in CI, not collected by pytest).

    pip install atheris            # needs clang/libFuzzer; not in the dev dependencies (may not install)
    python tests/reliability/fuzz_atheris.py -max_total_time=600 corpus/

Each input goes through :func:`ecgcad.integration.formats.readers.decode` (format sniffed: DICOM, MUSE/aECG XML, HL7 v2
with or without MLLP framing), the HL7 header parser and, for a decoded ECG, the quality gate. Anything but an
``Ecg`` or a :class:`~ecgcad.errors.DecodeError` (or a typed ``EcgcadError`` from the gate) is a finding:
atheris stops and writes ``crash-<sha1>``; commit that file's bytes as a regression case in
``tests/reliability/test_fuzz.py``. Seeds: the writers' DICOM, MUSE, aECG and HL7 samples (written to the
corpus folder on first run).
"""

from __future__ import annotations

import sys
from pathlib import Path


def _seed(corpus: Path) -> None:
    from ecgcad.testing import ecg_writers as w

    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    x = w.real_signal(250.0, seconds=2.0)
    seeds = {
        "dicom": w.build_dicom_ecg(x, 250),
        "muse": w.write_muse_xml(x, 250),
        "aecg": w.write_aecg_xml(x, 250),
        "hl7-ed": w.write_hl7_oru_ed(w.build_dicom_ecg(x, 250, include_median=False), mllp=True),
        "hl7-ma": w.write_hl7_oru_waveform(x[:, :100], 250),
    }
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)


def test_one_input(data: bytes) -> None:
    from ecgcad.config import GateSettings
    from ecgcad.errors import DecodeError, EcgcadError
    from ecgcad.integration.formats.gate import check
    from ecgcad.integration.formats.readers import decode
    from ecgcad.integration.transport.hl7_ack import parse_header

    try:
        parse_header(data)
    except DecodeError:
        pass
    try:
        ecg = decode(data)
    except DecodeError:
        return
    try:
        check(ecg, GateSettings())
    except EcgcadError:
        pass


def main() -> None:
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris; it needs clang): see docs/security.md")
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None:
        _seed(corpus)
    with atheris.instrument_imports():
        import ecgcad.integration.formats.readers  # noqa: F401
        import ecgcad.integration.transport.hl7_ack  # noqa: F401
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
