"""HL7 header check, ACK builder and order parsing."""

from __future__ import annotations

import pytest

from ecgcad.integration.transport.hl7_ack import (
    ERR_REQUIRED_FIELD_MISSING,
    Hl7HeaderError,
    ack_code,
    build_ack,
    loggable_message_type,
    parse_header,
    parse_order,
    split_segments,
)

ORU = (
    b"MSH|^~\\&|CART|WARD|ECGCAD|HOSP|20240101120000||ORU^R01^ORU_R01|MSG001|P|2.5.1\r"
    b"PID|1||123^^^HOSP^MR||DOE^JOHN\r"
)


def _segments(ack: bytes) -> dict[str, list[str]]:
    return {s.split(b"|")[0].decode(): s.decode("latin-1").split("|") for s in split_segments(ack)}


def test_parse_header_reads_msh_fields() -> None:
    h = parse_header(ORU)
    assert (h.sending_application, h.sending_facility) == ("CART", "WARD")
    assert (h.receiving_application, h.receiving_facility) == ("ECGCAD", "HOSP")
    assert h.type_code == "ORU^R01"
    assert h.message_control_id == "MSG001"
    assert h.version_id == "2.5.1"
    assert not h.enhanced_mode


def test_parse_header_accepts_other_delimiters_and_lf_segments() -> None:
    h = parse_header(b"MSH#$~\\&#A#B#C#D#2024##ADT$A08#X9#P#2.3\nPID#1\n")
    assert h.type_code == "ADT^A08"
    assert h.message_control_id == "X9"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"hello world", "100"),
        (b"PID|1||42\rMSH|^~\\&|A\r", "100"),
        (b"MSH|^~\\&|A|B|C|D|2024||ORU^R01||P|2.5\r", ERR_REQUIRED_FIELD_MISSING),
        (b"MSH|^~\\&|A|B|C|D|2024|||X|P|2.5\r", ERR_REQUIRED_FIELD_MISSING),
        (b"MSHA^~\\&|A\r", "100"),
    ],
)
def test_parse_header_rejects_messages_without_usable_msh(data: bytes, code: str) -> None:
    with pytest.raises(Hl7HeaderError) as info:
        parse_header(data)
    assert info.value.code == code


@pytest.mark.parametrize("control", [b"\x0b", b"\x1c", b"\x0c", b"\x00", b"\x1b", b"\x7f", b"\x85"], ids=repr)
@pytest.mark.parametrize("where", ["MSH-1", "MSH-2"])
def test_parse_header_refuses_control_characters_as_delimiters(control: bytes, where: str) -> None:
    data = ORU.replace(b"|", control) if where == "MSH-1" else ORU.replace(b"^~", b"^" + control, 1)
    with pytest.raises(Hl7HeaderError) as info:
        parse_header(data)
    assert info.value.code == "100"
    assert info.value.location == ("MSH^1^1" if where == "MSH-1" else "MSH^1^2")


@pytest.mark.parametrize("block", [b"\x0b", b"\x1c"])
def test_parse_header_refuses_mllp_block_characters_in_msh(block: bytes) -> None:
    with pytest.raises(Hl7HeaderError):
        parse_header(ORU.replace(b"|CART|", b"|CA" + block + b"RT|"))


@pytest.mark.parametrize(
    ("type_code", "logged"),
    [
        ("ORU^R01", "ORU^R01"),
        ("QRY^A19", "QRY^A19"),
        ("ADT", "ADT"),
        ("DOE^JANET", None),
        ("DOE^JAN", None),
        ("DOE", None),
        ("ORR^ANN", None),
        ("19600101", None),
        ("ORU^R0\xb2", None),
    ],
)
def test_message_type_is_logged_only_when_it_is_well_formed(type_code: str, logged: str | None) -> None:
    out = loggable_message_type(type_code)
    if logged is not None:
        assert out == logged
    else:
        assert out.startswith("type#") and type_code not in out
        assert out == loggable_message_type(type_code)  # stable: the same type hashes the same


def test_ack_swaps_applications_and_echoes_control_id() -> None:
    ack = build_ack(parse_header(ORU), "AA")
    seg = _segments(ack)
    assert seg["MSH"][2:6] == ["ECGCAD", "HOSP", "CART", "WARD"]
    assert seg["MSH"][8] == "ACK^R01^ACK"
    assert seg["MSA"][1:3] == ["AA", "MSG001"]
    assert "ERR" not in seg


def test_ack_error_carries_msa3_and_err_segment_with_code() -> None:
    ack = build_ack(
        parse_header(ORU), "AR", text="type X|Y not accepted", error_code="200", error_location="MSH^1^9"
    )
    seg = _segments(ack)
    assert seg["MSA"][1] == "AR"
    assert seg["MSA"][3] == "type X\\F\\Y not accepted"
    assert seg["ERR"][2] == "MSH^1^9"
    assert seg["ERR"][3].startswith("200^Unsupported message type^HL70357")


def test_ack_codes_follow_original_and_enhanced_mode() -> None:
    original = parse_header(ORU)
    assert [ack_code(original, o) for o in ("accept", "error", "reject")] == ["AA", "AE", "AR"]

    def enhanced(msh15: str) -> object:
        return parse_header(ORU.replace(b"|2.5.1\r", f"|2.5.1|||{msh15}|NE\r".encode()))

    assert ack_code(enhanced("AL"), "accept") == "CA"
    assert ack_code(enhanced("AL"), "error") == "CE"
    assert ack_code(enhanced("NE"), "reject") is None
    assert ack_code(enhanced("ER"), "accept") is None
    assert ack_code(enhanced("ER"), "reject") == "CR"
    assert ack_code(enhanced("SU"), "accept") == "CA"
    assert ack_code(enhanced("SU"), "error") is None


def test_build_ack_refuses_unknown_codes() -> None:
    with pytest.raises(ValueError):
        build_ack(None, "OK")


def test_parse_order_reads_orm_identifiers() -> None:
    orm = (
        b"MSH|^~\\&|RIS|HOSP|ECGCAD|HOSP|20240101||ORM^O01|O1|P|2.3\r"
        b"PID|1||PAT42^^^HOSP&1.2.3&ISO^MR~OTHER^^^X||DOE^JANE\r"
        b"PV1|1|O|||||||||||||||||V77^^^HOSP\r"
        b"ORC|NW|PL123^RIS|FI456^ECG\r"
        b"OBR|1|PL123|FI456|93000^ECG 12 lead^CPT||||||||||||||ACC789\r"
    )
    info = parse_order(orm)
    assert info.message_type == "ORM^O01"
    assert (info.placer_order_number, info.filler_order_number, info.accession_number) == (
        "PL123",
        "FI456",
        "ACC789",
    )
    assert (info.patient_id, info.issuer_of_patient_id) == ("PAT42", "HOSP")
    assert (info.visit_number, info.patient_class, info.order_control) == ("V77", "O", "NW")


def test_parse_order_is_tolerant_of_missing_segments() -> None:
    info = parse_order(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|Z|P|2.5\r")
    assert info.message_type == "ADT^A01"
    assert info.patient_id is None and info.placer_order_number is None


def test_parse_order_reads_omg_ipc_accession() -> None:
    omg = b"MSH|^~\\&|A|B|C|D|2024||OMG^O19^OMG_O19|Z|P|2.5.1\rPID|1||P1\rORC|NW|PL9\rOBR|1|PL9\rIPC|ACC9^HOSP|REQ1|1.2.3|SPS1\r"
    info = parse_order(omg)
    assert (info.placer_order_number, info.accession_number) == ("PL9", "ACC9")


def test_missing_message_type_is_logged_as_a_dash() -> None:
    assert loggable_message_type(None) == "-"
