"""``build_oru`` is byte-for-byte stable: its output equals the golden fixtures in ``golden_oru/``.

The fixtures were written by the original hl7apy-based builder (see ``golden_oru/cases.py``), so any change
of the ER7 writer that alters a single byte of any case — escaping, empty and blank components, field
placement, time stamps, segment order — fails here.
"""

from __future__ import annotations

import pytest

from ecgcad.integration.reports.oru import validate_oru
from tests.results.golden_oru.cases import CASES, HERE, build, path_of


@pytest.mark.parametrize("name", sorted(CASES))
def test_build_oru_matches_the_golden_fixture(name: str) -> None:
    expected = path_of(name).read_bytes()
    assert build(name) == expected


def test_every_fixture_file_has_a_case() -> None:
    assert {p.stem for p in HERE.glob("*.hl7")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_fixtures_pass_the_validator(name: str) -> None:
    message = path_of(name).read_bytes()
    assert validate_oru(message, structure=True) == []  # blank_identifiers: PID-5 sent as "" (required)
