"""Structure-aware fuzzing (hypothesis, bounded for CI) of everything a peer can send us.

Every input must end in an ``Ecg`` that the gate can judge, or a typed :class:`DecodeError` — no other
exception, no hang (each case is timed), no unbounded memory (XML entity expansion and external entities are
refused). The byte-level properties live in ``tests/formats/test_decode_properties.py``; these mutate the
structure: DICOM headers and waveform attributes, HL7 delimiters/escapes/fields, MLLP streams (glued frames,
control characters as delimiters, keep-alives), and hostile XML.
The number of cases tried is printed per target. ``ECGCAD_FUZZ_EXAMPLES`` raises the budget.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import os
import time
from collections import Counter

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ecgcad.config import GateSettings
from ecgcad.errors import DecodeError, EcgcadError
from ecgcad.integration.formats.ecg import Ecg
from ecgcad.integration.formats.gate import check
from ecgcad.integration.formats.readers import decode
from ecgcad.integration.transport.hl7_ack import Hl7HeaderError, build_ack, parse_header
from ecgcad.integration.transport.mllp import MllpDecoder, UnterminatedFrame, frame
from ecgcad.testing import ecg_writers as w
from tests.reliability.harness import figures

EXAMPLES = int(os.environ.get("ECGCAD_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
MAX_CASE_S = 10.0
TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report() -> object:
    yield
    figures("fuzz", cases_tried=dict(TRIED), total=sum(TRIED.values()), outcomes=dict(OUTCOMES))


def _verdict(target: str, data: bytes) -> None:
    """Decode ``data``: an Ecg the gate can judge, or a typed DecodeError; bounded in time."""
    TRIED[target] += 1
    t0 = time.monotonic()
    try:
        ecg = decode(data)
    except DecodeError as exc:
        OUTCOMES[f"DecodeError:{type(exc).__name__}"] += 1
        return
    finally:
        assert time.monotonic() - t0 < MAX_CASE_S, f"{target}: decode took {time.monotonic() - t0:.1f}s"
    assert isinstance(ecg, Ecg)
    try:
        verdict = check(ecg, GateSettings())
    except EcgcadError:
        OUTCOMES["gate:typed error"] += 1
        return
    OUTCOMES["scorable" if verdict.scorable else "not_evaluated"] += 1


@functools.cache
def _small_dicom() -> Dataset:
    x = w.real_signal(250.0, seconds=2.0)
    return pydicom.dcmread(io.BytesIO(w.build_dicom_ecg(x, 250)))


def _save(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - an unwritable mutation is not a decoder case
        return b""
    return buf.getvalue()


# -- DICOM ------------------------------------------------------------------------------------------------
WAVEFORM_KEYWORDS = (
    "NumberOfWaveformChannels",
    "NumberOfWaveformSamples",
    "SamplingFrequency",
    "WaveformBitsAllocated",
    "WaveformSampleInterpretation",
)
ABSURD_NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31), 10**9, 3, 65535]),
    st.integers(-(10**6), 10**7),
)
ABSURD_RATES = st.one_of(
    st.sampled_from(["0", "-500", "1e308", "NaN", "inf", "0.0001", "1e-300", "abc", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"{f:.6g}"[:16]),
)


@FUZZ
@given(
    keyword=st.sampled_from(WAVEFORM_KEYWORDS),
    number=ABSURD_NUMBERS,
    rate=ABSURD_RATES,
    cut=st.integers(0, 4000),
    interp=st.sampled_from(["SS", "SB", "UB", "US", "MB", "AB", "XX", ""]),
)
def test_dicom_waveform_attributes_mutated(
    keyword: str, number: int, rate: str, cut: int, interp: str
) -> None:
    ds = copy.deepcopy(_small_dicom())
    group = ds.WaveformSequence[0]
    raw_rate = None
    if keyword == "SamplingFrequency":
        # pydicom refuses to hold an invalid DS: write a placeholder and overwrite its bytes in the file
        group.SamplingFrequency = "987654.32109"
        raw_rate = rate.encode("latin-1")[:12].ljust(12)
    elif keyword == "WaveformSampleInterpretation":
        group.WaveformSampleInterpretation = interp
    elif keyword == "WaveformBitsAllocated":
        group.WaveformBitsAllocated = abs(number) % 70
    else:
        setattr(group, keyword, abs(number) % 2**31)
    if cut:
        group.WaveformData = bytes(group.WaveformData)[: max(0, len(group.WaveformData) - cut)]
    data = _save(ds)
    if raw_rate is not None:
        data = data.replace(b"987654.32109", raw_rate)
    _verdict("dicom-waveform", data)


@FUZZ
@given(
    tag_group=st.sampled_from([0x0008, 0x0010, 0x0020, 0x003A, 0x5400, 0x0002]),
    element=st.integers(0, 0xFFFF),
    vr=st.sampled_from(["UN", "OB", "SQ", "LO", "US", "UL", "DS", "IS", "UI", "FD"]),
    value=st.binary(max_size=64),
)
def test_dicom_header_elements_injected(tag_group: int, element: int, vr: str, value: bytes) -> None:
    ds = copy.deepcopy(_small_dicom())
    tag = (tag_group << 16) | element
    try:
        if vr == "SQ":
            ds.add_new(tag, vr, Sequence([Dataset()]))
        else:
            ds.add_new(tag, vr, value if vr in ("UN", "OB") else value.decode("latin-1"))
    except Exception:  # noqa: BLE001 - pydicom refuses the element: not a decoder case
        return
    _verdict("dicom-header", _save(ds))


@FUZZ
@given(depth=st.integers(1, 300), where=st.sampled_from(["root", "waveform", "channel"]))
def test_dicom_deep_sequences(depth: int, where: str) -> None:
    ds = copy.deepcopy(_small_dicom())
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    target = {
        "root": ds,
        "waveform": ds.WaveformSequence[0],
        "channel": ds.WaveformSequence[0].ChannelDefinitionSequence[0],
    }[where]
    target.ContentSequence = Sequence([inner])
    _verdict("dicom-deep", _save(ds))


@FUZZ
@given(offset=st.integers(0, 600), data=st.binary(min_size=1, max_size=16))
def test_dicom_header_bytes_overwritten(offset: int, data: bytes) -> None:
    raw = bytearray(_save(_small_dicom()))
    raw[128 + offset : 128 + offset + len(data)] = data
    _verdict("dicom-bytes", bytes(raw))


# -- HL7 v2 -----------------------------------------------------------------------------------------------
@functools.cache
def _small_oru() -> bytes:
    x = w.real_signal(250.0, seconds=2.0)
    return w.write_hl7_oru_ed(w.build_dicom_ecg(x, 250, include_median=False))


HL7_JUNK = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [b"\\E\\", b"\\X0D\\", b"\\H\\\\N\\", b"\\Zxx\\", b"\\", b"^~\\&", b"\x00", b"\r\r\r", b"|" * 50]
    ),
)


@FUZZ
@given(
    encoding=st.one_of(st.sampled_from([b"^~\\&", b"^~\\&#", b"^~&", b"", b"||||"]), st.binary(max_size=6)),
    field_sep=st.one_of(st.just(b"|"), st.sampled_from([b"", b"#", b"\r", b"^"]), st.binary(max_size=2)),
    junk=HL7_JUNK,
    where=st.integers(0, 2000),
    drop_msh=st.booleans(),
    huge=st.sampled_from([0, 0, 70_000, 1_000_000]),
)
def test_hl7_delimiters_escapes_huge_fields_missing_msh(
    encoding: bytes, field_sep: bytes, junk: bytes, where: int, drop_msh: bool, huge: int
) -> None:
    msg = _small_oru()
    if drop_msh:
        msg = msg.split(b"\r", 1)[1]
    else:
        msg = b"MSH" + field_sep + encoding + msg[8:]
    msg = msg[:where] + junk + msg[where:]
    if huge:
        msg += b"\rNTE|1|L|" + b"A" * huge + b"\r"
    for data in (msg, b"\x0b" + msg + b"\x1c\x0d"):
        TRIED["hl7-header"] += 1
        try:
            parse_header(data)
        except DecodeError:
            OUTCOMES["hl7-header:typed error"] += 1
        _verdict("hl7", data)


@FUZZ
@given(payload=st.binary(max_size=2000), subtype=st.sampled_from(["DICOM", "XML", "PDF", "", "^^^"]))
def test_hl7_ed_payload_junk(payload: bytes, subtype: str) -> None:
    enc = base64.b64encode(payload).decode()
    msg = (
        _small_oru().split(b"\rOBX|")[0]
        + f"\rOBX|1|ED|93000^ECG^CPT|1|X^application^{subtype}^Base64^{enc}||||||F\r".encode()
    )
    _verdict("hl7-ed", msg)


# -- MLLP streams: glued frames, odd delimiters, keep-alives ------------------------------------------------
_MSG = b"MSH|^~\\&|CART|WARD|ECGCAD|HOSP|20240101||ORU^R01|FZ1|P|2.5.1\rPID|1||PATIENT-B\r"
MLLP_PIECES = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"\x0b", b"\x1c", b"\x1c\r", b"\x0b\x1c\r", b"\r", b"\x0bMSH|^~\\&|A|B\r"]),
    # a message whose MSH-1 or MSH-2 is a control character (0x0B and 0x1C among them)
    st.tuples(st.sampled_from([b"\x0b", b"\x0c", b"\x00", b"\x1c", b"\x7f", b"\t"]), st.booleans()).map(
        lambda t: (
            b"\x0b" + (_MSG.replace(b"|", t[0]) if t[1] else _MSG.replace(b"^~", b"^" + t[0], 1)) + b"\x1c\r"
        )
    ),
    # a message that lost its end block
    st.just(b"\x0b" + _MSG.replace(b"PATIENT-B", b"PATIENT-A")),
)


@FUZZ
@given(prefix=st.lists(MLLP_PIECES, max_size=8), chunk=st.sampled_from([0, 1, 3, 64]))
def test_mllp_streams_never_glue_messages_and_every_accepted_header_gets_a_framable_ack(
    prefix: list[bytes], chunk: int
) -> None:
    """Whatever came before it, a whole frame comes back alone and intact; no message that is handed back
    whole carries a start block (two messages glued); every header the listener accepts gets an ACK that
    can be framed (0x0B or 0x1C echoed into an ACK used to drop the connection)."""
    TRIED["mllp-stream"] += 1
    stream = b"".join(prefix) + frame(_MSG)
    decoder = MllpDecoder()
    step = chunk or len(stream)
    out = [m for i in range(0, len(stream), step) for m in decoder.feed(stream[i : i + step])]
    assert out and out[-1] == _MSG and type(out[-1]) is bytes
    for message in out:
        assert b"\x0b" not in message
        if type(message) is UnterminatedFrame:
            OUTCOMES["mllp-stream:unterminated"] += 1
        try:
            header = parse_header(message)
        except Hl7HeaderError:
            OUTCOMES["mllp-stream:header refused"] += 1
            continue
        for code in ("AA", "AR", "CE"):
            frame(build_ack(header, code, text="refused"))


# -- MUSE / aECG XML ----------------------------------------------------------------------------------------
BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    + b"]><RestingECG><PatientDemographics><PatientID>&lol9;</PatientID></PatientDemographics></RestingECG>"
)


def _xxe(root: str, url: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "{url}">]>'
        f"<{root}><PatientID>&xxe;</PatientID></{root}>"
    ).encode()


@pytest.mark.parametrize("root", ["RestingECG", "AnnotatedECG"])
@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://127.0.0.1:9/x", "file:///dev/zero"])
def test_xml_external_entities_are_refused(root: str, url: str) -> None:
    t0 = time.monotonic()
    TRIED["xml-xxe"] += 1
    with pytest.raises(DecodeError):
        decode(_xxe(root, url))
    assert time.monotonic() - t0 < 5


def test_xml_entity_expansion_is_refused_without_expanding() -> None:
    import tracemalloc

    TRIED["xml-billion-laughs"] += 1
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode(BILLION_LAUGHS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MB while refusing entity expansion"


@functools.cache
def _xml_seeds() -> dict[str, bytes]:
    x = w.real_signal(250.0, seconds=2.0)
    return {"muse": w.write_muse_xml(x, 250), "aecg": w.write_aecg_xml(x, 250)}


@FUZZ
@given(
    kind=st.sampled_from(["muse", "aecg"]),
    where=st.floats(0, 1),
    insert=st.one_of(
        st.sampled_from(
            [b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"&a;", b"<![CDATA[", b"]]>", b"</", b"<x>", b"\x00", b"&#0;",
             b"&#x110000;", b"<?xml-stylesheet?>", b"1e999", b"-0", b"NaN"]
        ),
        st.binary(max_size=40),
    ),
)  # fmt: skip
def test_muse_and_aecg_xml_mutated(kind: str, where: float, insert: bytes) -> None:
    seed = _xml_seeds()[kind]
    i = int(where * len(seed))
    _verdict(f"xml-{kind}", seed[:i] + insert + seed[i:])


# -- corrupt samples, sensitivities and sampling rates (issue 16): refused with a coded reason ----------------
#: Sample values that overflow float32 millivolts (or are infinite already).
OVERFLOWING_SAMPLES = st.sampled_from(["1e308", "-1e308", "1e42", "-3e41", "inf", "-inf", "Infinity"])
NEGATIVE_SENSITIVITIES = st.floats(min_value=-1e300, max_value=-1e-300).map(lambda f: f"{f:.6g}")
#: Rates outside 100–20,000 Hz, written so that rounding cannot bring them back into the range.
IMPLAUSIBLE_RATES = st.one_of(
    st.sampled_from(["1e9", "1e-9", "99.9", "20001", "1e308"]),
    st.floats(min_value=1e-300, max_value=99.9).map(lambda f: f"{f:.6g}"),
    st.floats(min_value=20001, max_value=1e300).map(lambda f: f"{f:.6g}"),
)


def _refused(target: str, data: bytes, code: str) -> None:
    """Decode ``data``: a typed DecodeError, or an Ecg the gate refuses with ``code`` first — never scored."""
    TRIED[target] += 1
    try:
        ecg = decode(data)
    except DecodeError:
        OUTCOMES[f"{target}:DecodeError"] += 1
        return
    verdict = check(ecg, GateSettings())
    assert not verdict.scorable and verdict.codes[0] == code, verdict.to_dict()
    assert verdict.window is None, "a corrupt record is never windowed"
    OUTCOMES[f"{target}:{code}"] += 1


@functools.cache
def _chapter7_segments() -> tuple[bytes, ...]:
    x = w.real_signal(250.0, seconds=2.0)
    return tuple(w.write_hl7_oru_waveform(x, 250, array_type="NA").split(b"\r"))


def _chapter7(kind: str, value: str, lead: int) -> bytes:
    segments = [s.split(b"|") for s in _chapter7_segments()]
    cd = [s for s in segments if s[0] == b"OBX" and s[2] == b"CD"]
    na = [s for s in segments if s[0] == b"OBX" and s[2] == b"NA"]
    if kind == "samples":
        values = na[lead % len(na)][5].split(b"^")
        values[len(values) // 2] = value.encode()
        na[lead % len(na)][5] = b"^".join(values)
    else:
        for i, seg in enumerate(cd):
            parts = seg[5].split(b"^")
            if kind == "rate":
                parts[4] = value.encode()
            elif i == lead % len(cd):
                parts[2] = value.encode() + b"&uV"
            seg[5] = b"^".join(parts)
    return b"\r".join(b"|".join(s) for s in segments)


@FUZZ
@given(
    kind=st.sampled_from(["samples", "sensitivity", "rate"]),
    sample=OVERFLOWING_SAMPLES,
    sensitivity=NEGATIVE_SENSITIVITIES,
    rate=IMPLAUSIBLE_RATES,
    lead=st.integers(0, 11),
)
def test_hl7_chapter7_corrupt_samples_sensitivities_and_rates_are_refused(
    kind: str, sample: str, sensitivity: str, rate: str, lead: int
) -> None:
    value = {"samples": sample, "sensitivity": sensitivity, "rate": rate}[kind]
    code = {
        "samples": "non_finite_samples",
        "sensitivity": "bad_sensitivity",
        "rate": "implausible_sampling_rate",
    }
    _refused("hl7-chapter7-corrupt", _chapter7(kind, value, lead), code[kind])


@FUZZ
@given(
    kind=st.sampled_from(["sensitivity", "overflow", "rate"]),
    sensitivity=NEGATIVE_SENSITIVITIES,
    huge=st.floats(min_value=1e300, max_value=1e308).map(lambda f: f"{f:.6g}"),
    rate=IMPLAUSIBLE_RATES.filter(lambda r: len(r) <= 12),
    channel=st.integers(0, 11),
)
def test_dicom_corrupt_sensitivities_and_rates_are_refused(
    kind: str, sensitivity: str, huge: str, rate: str, channel: int
) -> None:
    ds = copy.deepcopy(_small_dicom())
    group = next(g for g in ds.WaveformSequence if g.WaveformOriginality == "ORIGINAL")
    if kind == "rate":
        group.SamplingFrequency = "987654.32109"  # overwritten in the file: pydicom holds only valid DS
    else:
        channels = group.ChannelDefinitionSequence
        channels[channel % len(channels)].ChannelSensitivity = sensitivity if kind == "sensitivity" else huge
    data = _save(ds)
    if kind == "rate":
        data = data.replace(b"987654.32109", rate.encode().ljust(12))
    code = {
        "sensitivity": "bad_sensitivity",
        "overflow": "non_finite_samples",
        "rate": "implausible_sampling_rate",
    }
    _refused("dicom-corrupt", data, code[kind])
