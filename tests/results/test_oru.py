"""The ORU^R01: parses back with hl7apy and python-hl7, fields as specified, our validator catches breakage."""

from __future__ import annotations

import base64

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from ecgcad.errors import BuildError
from ecgcad.integration.reports.oru import OruProfile, build_oru, control_id_for, validate_oru
from tests.results.conftest import make_input, not_evaluated_input

PDF = b"%PDF-1.4\n% test\n"


@pytest.fixture(scope="module")
def scored(ecg_dataset, ecg_bytes) -> bytes:
    return build_oru(make_input(ecg_dataset, ecg_bytes), control_id=control_id_for(7, 1, 1), include_pdf=PDF)


def _obx(msg: hl7.Message) -> list[hl7.Segment]:
    return [s for s in msg if str(s[0]) == "OBX"]


def test_oru_parses_with_python_hl7_and_fields_are_as_specified(scored, ecg_dataset):
    assert b"\r" in scored and b"\n" not in scored
    msg = hl7.parse(scored.decode("utf-8"))
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(msg.segment("MSH")[10]) == "E7V1A1"
    assert str(msg.segment("MSH")[12]) == "2.5.1"
    pid = msg.segment("PID")
    assert str(pid[3]) == f"{ecg_dataset.PatientID}^^^HOSP-MRN"
    assert str(pid[5]) == str(ecg_dataset.PatientName)
    assert (str(pid[7]), str(pid[8])) == (ecg_dataset.PatientBirthDate, ecg_dataset.PatientSex)
    orc, obr = msg.segment("ORC"), msg.segment("OBR")
    assert (str(orc[1]), str(orc[2]), str(orc[3])) == ("RE", "PL123", "FL456")
    assert (str(obr[2]), str(obr[3])) == ("PL123", "FL456")
    assert str(obr[4]).startswith("ECGCAD-CAD4^")
    assert str(obr[7]) == "20130125105919"
    assert str(obr[18]) == ecg_dataset.AccessionNumber
    assert (str(obr[22]), str(obr[24]), str(obr[25])) == ("20240506070809", "EC", "P")
    obx = _obx(msg)
    nm = [s for s in obx if str(s[2]) == "NM"]
    assert [str(s[3][0][0]) for s in nm] == ["RCA-PROB", "LM-PROB", "LAD-PROB", "LCX-PROB"]
    assert [float(str(s[5])) for s in nm] == [0.42, 0.004, 0.09, 0.15]
    assert [str(s[7]) for s in nm] == ["<0.15", "<0.01", "<0.15", "<0.15"]
    assert [str(s[8]) for s in nm] == ["A", "N", "N", "A"]
    assert all(str(s[6]) == "1^^UCUM" and str(s[11]) == "P" for s in nm)
    risk = [str(s[5]) for s in obx if str(s[3][0][0]).endswith("-RISK")]
    assert risk == [
        "15508007^High risk^SCT",
        "75976002^Low risk^SCT",
        "75976002^Low risk^SCT",
        "15508007^High risk^SCT",
    ]
    overall = [s for s in obx if str(s[3][0][0]) == "ANY-FLAG"][0]
    assert (str(overall[5][0][0]), str(overall[8])) == ("Y", "A")
    ed = [s for s in obx if str(s[2]) == "ED"][0]
    assert base64.b64decode(str(ed[5][0][4])) == PDF
    notes = [str(s[3]) for s in msg if str(s[0]) == "NTE"]
    assert "DEMONSTRATION MODEL — NOT FOR CLINICAL USE" in notes
    assert any("0.1.0-demo" in n for n in notes)


def test_oru_parses_with_hl7apy_strict_structure(scored):
    msg = parse_message(scored.decode("utf-8"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert msg.validate()
    assert msg.msh.msh_12.value == "2.5.1"
    assert msg.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.orc.orc_1.value == "RE"


def test_our_validator_passes_our_messages(scored, ecg_dataset, ecg_bytes):
    assert validate_oru(scored) == []
    ne = build_oru(
        not_evaluated_input(ecg_dataset, ecg_bytes),
        control_id="X1",
        profile=OruProfile(not_evaluated_mode="X"),
    )
    assert validate_oru(ne) == []
    msg = hl7.parse(ne.decode("utf-8"))
    assert str(msg.segment("OBR")[25]) == "X"
    obx = _obx(msg)
    assert len(obx) == 1 and str(obx[0][8]) == "IND" and str(obx[0][5][0][0]) == "AGE"


def test_not_evaluated_defaults_to_ind_with_the_reason(ecg_dataset, ecg_bytes):
    msg = hl7.parse(build_oru(not_evaluated_input(ecg_dataset, ecg_bytes), control_id="X2").decode())
    assert str(msg.segment("OBR")[25]) == "P"
    obx = _obx(msg)[0]
    assert (str(obx[8]), str(obx[11])) == ("IND", "P")
    assert "Patient younger than 18 years" in str(obx[5])


def test_correction_is_sent_with_status_c(ecg_dataset, ecg_bytes):
    inp = make_input(ecg_dataset, ecg_bytes, result_version=2)
    with pytest.raises(BuildError):
        build_oru(inp, control_id="C1")
    msg = hl7.parse(build_oru(inp, control_id="C1", result_status="C").decode())
    assert str(msg.segment("OBR")[25]) == "C"
    assert {str(s[11]) for s in _obx(msg)} == {"C"}


def test_free_text_and_names_are_escaped(ecg_dataset, ecg_bytes):
    inp = make_input(ecg_dataset, ecg_bytes, intended_use="Adults | not^kids & more~x \\ end")
    msg = build_oru(inp, control_id="E1")
    assert validate_oru(msg) == []
    assert b"Adults \\F\\ not\\S\\kids \\T\\ more\\R\\x \\E\\ end" in msg


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (b"|NM|RCA-PROB", b"|XX|RCA-PROB", "table 0125"),
        (b"|0.42|", b"|high|", "not a number"),
        (b"|A|||P|", b"|Q|||P|", "table 0078"),
        (b"|EC|P", b"|EC|Q", "table 0123"),
        (b"ORU^R01^ORU_R01", b"ORU^R01", "MSH-9"),
        (b"|2.5.1|", b"|2.5|", "MSH-12"),
        (b"ORC|RE", b"ORC|NW", "ORC-1"),
        (b"|||P|||2013", b"|||Z|||2013", "table 0085"),
        (b"^Base64^", b"^Base64^!!", "Base64"),
    ],
)
def test_our_validator_finds_problems_in_broken_messages(scored, old, new, expected):
    assert old in scored
    problems = validate_oru(scored.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_validator_requires_obx_11_and_pid_3(scored):
    segments = scored.split(b"\r")
    broken = []
    for seg in segments:
        if seg.startswith(b"PID"):
            seg = b"PID|1||"
        if seg.startswith(b"OBX|1|"):
            seg = b"|".join(seg.split(b"|")[:11])
        broken.append(seg)
    problems = validate_oru(b"\r".join(broken))
    assert any("PID-3" in p for p in problems) and any("OBX-11" in p for p in problems)


def test_bad_arguments_are_refused(ecg_dataset, ecg_bytes):
    inp = make_input(ecg_dataset, ecg_bytes)
    with pytest.raises(BuildError):
        build_oru(inp, control_id="has space")
    with pytest.raises(BuildError):
        build_oru(inp, control_id="A", include_pdf=b"nope")
    with pytest.raises(BuildError):
        OruProfile(not_evaluated_mode="Y")  # type: ignore[arg-type]
