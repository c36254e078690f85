"""Property tests: any bytes give an Ecg or a typed DecodeError — never another exception, never a hang."""

from __future__ import annotations

import functools
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecgcad.errors import DecodeError
from ecgcad.integration.formats.ecg import Ecg
from ecgcad.integration.formats.readers import decode
from ecgcad.testing import ecg_writers as w

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _seeds() -> dict[str, bytes]:
    x = w.real_signal(250.0, seconds=2.0)  # small seeds keep each example fast
    return {
        "dicom": w.build_dicom_ecg(x, 250),
        "dicom-implicit": w.build_dicom_ecg(x, 250, transfer_syntax="implicit"),
        "muse": w.write_muse_xml(x, 250),
        "aecg": w.write_aecg_xml(x, 250),
        "hl7-ed": w.write_hl7_oru_ed(w.build_dicom_ecg(x, 250, include_median=False), mllp=True),
        "hl7-ma": w.write_hl7_oru_waveform(x[:, :100], 250),
    }


def _decode_or_typed_error(data: bytes) -> None:
    try:
        ecg = decode(data)
    except DecodeError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(ecg, Ecg)
    assert ecg.signal.shape[0] == 12


@PROPS
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _decode_or_typed_error(data)


@PROPS
@given(
    st.sampled_from(
        ["\x00" * 128 + "DICM", "MSH|^~\\&|", "\x0bMSH|^~\\&|", "<RestingECG>", "<AnnotatedECG>"]
    ),
    st.binary(max_size=512),
)
def test_format_prefix_then_garbage(prefix, tail):
    _decode_or_typed_error(prefix.encode("latin-1") + tail)


@PROPS
@given(
    st.sampled_from(sorted(_seeds())),
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.floats(0, 1),
)
def test_mutated_valid_files(kind, flips, keep):
    data = bytearray(_seeds()[kind])
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    _decode_or_typed_error(bytes(data[: max(1, int(len(data) * (0.2 + 0.8 * keep)))]))


def test_seeds_decode():
    for data in _seeds().values():
        assert isinstance(decode(data), Ecg)


def test_logs_carry_no_patient_identifiers(caplog, real_bytes):
    with caplog.at_level(logging.DEBUG, logger="ecgcad"):
        decode(w.write_hl7_oru_ed(real_bytes))
        with pytest.raises(DecodeError):
            decode(b"MSH|^~\\&|A|B\rPID|1||ZZTEST-4711\r")
    text = caplog.text
    assert w.TEST_IDENTIFIERS.patient_id not in text and "Testperson" not in text and "642341" not in text


# -- values that overflow, corrupt sensitivities and rates (issue 16): an Ecg the gate refuses, coded -------
@functools.cache
def _ma_segments() -> tuple[bytes, ...]:
    return tuple(_seeds()["hl7-ma"].split(b"\r"))


def _ma_with(field: str, value: str, position: float) -> bytes:
    """The Chapter 7 MA seed with one sample, one channel's sensitivity or every channel's rate replaced."""
    segments = [s.split(b"|") for s in _ma_segments()]
    cd = [s for s in segments if s[0] == b"OBX" and s[2] == b"CD"]
    (ma,) = [s for s in segments if s[0] == b"OBX" and s[2] == b"MA"]
    if field == "sample":
        samples = ma[5].replace(b"~", b"^").split(b"^")
        samples[int(position * (len(samples) - 1))] = value.encode()
        width = len(cd)
        ma[5] = b"~".join(b"^".join(samples[i : i + width]) for i in range(0, len(samples), width))
    for i, seg in enumerate(cd):
        parts = seg[5].split(b"^")
        if field == "rate":
            parts[4] = value.encode()
        elif field == "sensitivity" and i == int(position * (len(cd) - 1)):
            parts[2] = value.encode() + b"&uV"
        seg[5] = b"^".join(parts)
    return b"\r".join(b"|".join(s) for s in segments)


@PROPS
@given(
    st.one_of(
        st.tuples(st.just("sample"), st.sampled_from(["1e308", "-1e308", "inf", "-Infinity", "2e41"])),
        st.tuples(st.just("sensitivity"), st.floats(-1e300, -1e-300).map(lambda f: f"{f:.6g}")),
        st.tuples(
            st.just("rate"),
            st.one_of(
                st.floats(1e-300, 99.9).map(lambda f: f"{f:.6g}"),
                st.floats(20001, 1e300).map(lambda f: f"{f:.6g}"),
            ),
        ),
    ),
    st.floats(0, 1),
)
def test_corrupt_numbers_give_an_ecg_the_gate_refuses_with_its_code(change, position):
    """No overflow warning escapes a reader, and the record is refused, never scored."""
    from ecgcad.integration.formats.gate import check

    field, value = change
    ecg = decode(_ma_with(field, value, position))
    code = {
        "sample": "non_finite_samples",
        "sensitivity": "bad_sensitivity",
        "rate": "implausible_sampling_rate",
    }
    assert check(ecg).codes[0] == code[field]
