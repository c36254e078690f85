"""The fast ORU checks used at build time (no hl7apy re-parse) still catch a wrong segment order."""

from __future__ import annotations

from ecgcad.integration.reports.oru import validate_oru

GOOD = (
    "MSH|^~\\&|ECGCAD||EHR||20260101120000+0000||ORU^R01^ORU_R01|E1V1A1|P|2.5.1\r"
    "PID|1||MRN1^^^HOSP^MR\r"
    "ORC|RE|PL1|FI1\r"
    "OBR|1|PL1|FI1|X^AI ECG^99ECGCAD|||20260101115500|||||||||||||||20260101120000+0000||EC|P\r"
    "OBX|1|NM|RCA^RCA^99ECGCAD||0.2|1^^UCUM|<0.15|A|||P\r"
)


def test_fast_checks_accept_the_right_order_and_refuse_a_wrong_one() -> None:
    assert validate_oru(GOOD.encode(), structure=False) == []
    swapped = GOOD.replace("ORC|RE|PL1|FI1\r", "").replace("OBX|1|", "ORC|RE|PL1|FI1\rOBX|1|")
    problems = validate_oru(swapped.encode(), structure=False)
    assert any("order" in p for p in problems), problems
