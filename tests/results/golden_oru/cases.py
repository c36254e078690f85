"""Inputs of the golden ORU^R01 fixtures (one ``<case>.hl7`` file per entry of :data:`CASES`).

Every case is deterministic: the message time, result time and control id are fixed. The fixtures were
written by the hl7apy-based builder and pin its exact bytes; regenerate them only when the message is
meant to change::

    .venv/bin/python -m tests.results.golden_oru.cases --write
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecgcad.integration.formats.ecg import EcgIdentifiers
from ecgcad.integration.reports.content import StenosisReportInput
from ecgcad.integration.reports.oru import OruProfile, build_oru
from tests.results.conftest import THRESHOLDS, make_input

HERE = Path(__file__).resolve().parent

#: A small, fixed "PDF" (enough for the ``%PDF-`` check; long enough for several Base64 lines' worth).
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 3 + b"\n%%EOF\n"

MESSAGE_TIME = dt.datetime(2024, 5, 6, 7, 9, 10)
MESSAGE_TIME_TZ = dt.datetime(2024, 5, 6, 7, 9, 10, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))

#: Identifiers as a DICOM ECG typically carries them.
FULL = EcgIdentifiers(
    patient_id="MRN0001",
    issuer_of_patient_id="HOSP-MRN",
    patient_name="Doe^John^Quincy^Dr^Jr",
    patient_birth_date="19560321",
    patient_sex="M",
    accession_number="ACC-77",
    study_instance_uid="1.2.3.4",
    sop_instance_uid="1.2.3.4.5",
    acquisition_datetime=dt.datetime(2013, 1, 25, 10, 59, 19),
)

#: Every HL7 delimiter (and the escape character) in every copied identifier and free text.
DELIMS = dataclasses.replace(
    FULL,
    patient_id="MRN|1^2~3\\4&5",
    issuer_of_patient_id="HOSP^A|B",
    patient_name="O|Brien~X^Ann&Marie\\Z^Mid^Pre|fix^Suf~fix",
    patient_birth_date="1956|03^21",
    patient_sex="M&F",
    accession_number="ACC|7^7~7&7\\7",
    visit_number="V|1^2",
    placer_order_number="PL|1",
    filler_order_number="FL^2",
)

#: Line breaks (CR, LF, CRLF) in names, identifiers and free text.
BREAKS = dataclasses.replace(
    FULL,
    patient_id="MRN\r\n42",
    patient_name="Smith\r\nJones^Ann\nMarie^\rMid",
    accession_number="ACC\n1",
    visit_number="VIS\r2",
)

#: Non-ASCII characters (Latin-1, CJK, an emoji, a DICOM PN with ideographic and phonetic groups).
UNICODE = dataclasses.replace(
    FULL,
    patient_id="MRN-Ö1",
    issuer_of_patient_id="HÔPITAL",
    patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
    accession_number="ACC-ü-€",
    visit_number="VIS-ñ",
    placer_order_number="PL-日本",
)

#: Only the Patient ID: no name, issuer, birth date, sex, acquisition time, orders or accession.
MINIMAL = EcgIdentifiers(patient_id="P1")

#: Whitespace-only optional values (hl7apy drops blank components of composite fields).
BLANKS = dataclasses.replace(
    FULL,
    issuer_of_patient_id=" ",
    patient_name=" ",
    patient_birth_date=" ",
    patient_sex=" ",
    accession_number=" ",
    visit_number=" ",
    placer_order_number=" ",
    filler_order_number="\t",
)


def _scored(
    ident: EcgIdentifiers, scores: dict[str, float] | None = None, **over: Any
) -> StenosisReportInput:
    kw: dict[str, Any] = dict(identifiers=ident, placer_order_number=None, filler_order_number=None)
    if scores is not None:
        thresholds = over.pop("thresholds", THRESHOLDS)
        kw.update(
            probabilities=scores,
            thresholds=thresholds,
            flags={v: scores[v] >= thresholds[v] for v in thresholds},
        )
    kw.update(over)
    return make_input(None, None, **kw)


def _not_evaluated(ident: EcgIdentifiers, **over: Any) -> StenosisReportInput:
    kw: dict[str, Any] = dict(
        scorable=False,
        probabilities={},
        flags={},
        not_evaluated_reason=("AGE", "Patient younger than 18 years"),
    )
    kw.update(over)
    return _scored(ident, **kw)


ALL_LOW = {"rca": 0.01, "lm": 0.0, "lad": 0.149999, "lcx": 0.1}
ALL_HIGH = {"rca": 1.0, "lm": 0.5, "lad": 0.15, "lcx": 0.987654321}
ODD_THRESHOLDS = {"rca": 0.333333333, "lm": 0.0, "lad": 1.0, "lcx": 0.5}

#: A case: ``() -> (report input, keyword arguments of build_oru other than the input)``.
Case = Callable[[], tuple[StenosisReportInput, dict[str, Any]]]


def _c(inp: Callable[[], StenosisReportInput], **kwargs: Any) -> Case:
    kwargs.setdefault("control_id", "E7V1A1")
    kwargs.setdefault("message_time", MESSAGE_TIME)
    return lambda: (inp(), dict(kwargs))


CASES: dict[str, Case] = {
    # scored results, flags and statuses
    "scored_default": _c(lambda: make_input(None, None, identifiers=FULL)),
    "scored_all_low": _c(lambda: _scored(FULL, ALL_LOW)),
    "scored_all_high_final": _c(lambda: _scored(FULL, ALL_HIGH), result_status="F"),
    "scored_odd_thresholds": _c(
        lambda: _scored(
            FULL, {"rca": 0.123456789, "lm": 0.0, "lad": 0.9999999, "lcx": 0.5}, thresholds=ODD_THRESHOLDS
        )
    ),
    "scored_corrected": _c(lambda: _scored(FULL, result_version=2), result_status="C", control_id="E7V2A3"),
    "scored_no_disclaimer": _c(lambda: _scored(FULL, demonstration=False)),
    # not evaluated, in both modes
    "not_evaluated_ind": _c(lambda: _not_evaluated(FULL)),
    "not_evaluated_ind_final": _c(lambda: _not_evaluated(FULL), result_status="F"),
    "not_evaluated_x": _c(lambda: _not_evaluated(FULL), profile=OruProfile(not_evaluated_mode="X")),
    "not_evaluated_x_corrected": _c(
        lambda: _not_evaluated(
            FULL, result_version=3, not_evaluated_reason=("DECODE_FAILED", "Decoding failed")
        ),
        result_status="C",
        profile=OruProfile(not_evaluated_mode="X"),
    ),
    "not_evaluated_ind_corrected": _c(lambda: _not_evaluated(FULL, result_version=2), result_status="C"),
    # profile: PV1, accession placement, service code, acknowledgement types
    "pv1_forced": _c(lambda: _scored(FULL), profile=OruProfile(include_pv1=True)),
    "pv1_visit_number": _c(lambda: _scored(dataclasses.replace(FULL, visit_number="VIS-9"))),
    "pv1_forced_visit_number": _c(
        lambda: _scored(dataclasses.replace(FULL, visit_number="VIS-9")), profile=OruProfile(include_pv1=True)
    ),
    "accession_obr20": _c(lambda: _scored(FULL), profile=OruProfile(accession_field="OBR-20")),
    "accession_none": _c(lambda: _scored(FULL), profile=OruProfile(accession_field=None)),
    "accession_argument_obr18": _c(lambda: _scored(FULL, accession_number="ARG-ACC")),
    "accession_missing_obr20": _c(
        lambda: _scored(dataclasses.replace(FULL, accession_number=None)),
        profile=OruProfile(accession_field="OBR-20"),
    ),
    "service_code_custom": _c(
        lambda: _scored(FULL),
        profile=OruProfile(service_code=("SVC|1", "Stenosis ^ risk & more", "L~N")),
    ),
    "msh_options": _c(
        lambda: _scored(FULL),
        sending_application="ECG|CAD",
        sending_facility="FAC^1",
        receiving_application="EHR~APP",
        receiving_facility="RCV&\\FAC",
        processing_id="T",
        message_time=MESSAGE_TIME_TZ,
        profile=OruProfile(accept_ack_type="AL", application_ack_type="NE"),
    ),
    "msh_ack_er_su_debug": _c(
        lambda: _scored(FULL),
        processing_id="D",
        profile=OruProfile(accept_ack_type="ER", application_ack_type="SU"),
    ),
    "msh_application_ack_only": _c(
        lambda: _scored(FULL), profile=OruProfile(application_ack_type="AL"), sending_application=""
    ),
    # embedded PDF
    "pdf_scored": _c(lambda: _scored(FULL), include_pdf=PDF),
    "pdf_not_evaluated_x": _c(
        lambda: _not_evaluated(FULL), include_pdf=PDF, profile=OruProfile(not_evaluated_mode="X")
    ),
    "pdf_corrected_pv1": _c(
        lambda: _scored(FULL, result_version=2),
        include_pdf=PDF,
        result_status="C",
        profile=OruProfile(include_pv1=True, accession_field="OBR-20"),
    ),
    # identifiers and free text that need escaping
    "delimiters": _c(
        lambda: _scored(
            DELIMS,
            intended_use="Adults | not^kids & more~x \\ end \\F\\ literal",
            model_name="model|^~&\\name",
            window_policy="first^best",
        )
    ),
    "delimiters_not_evaluated": _c(
        lambda: _not_evaluated(DELIMS, not_evaluated_reason=("NOISE", "Noise | artefact ^ & ~ \\ in leads")),
        profile=OruProfile(not_evaluated_mode="X", include_pv1=True),
    ),
    "delimiters_order_arguments": _c(
        lambda: _scored(
            FULL, placer_order_number="P|1^2", filler_order_number="F~3&4", accession_number="A\\5"
        )
    ),
    "line_breaks": _c(
        lambda: _scored(
            BREAKS,
            intended_use="Line one\r\nline two\rline three\nline four",
            placer_order_number="PL\n7",
            filler_order_number="FL\r\n8",
        )
    ),
    "line_breaks_not_evaluated": _c(
        lambda: _not_evaluated(BREAKS, not_evaluated_reason=("QC", "Lead\r\noff\nin V1"))
    ),
    "non_ascii": _c(
        lambda: _scored(
            UNICODE,
            intended_use="Aide à la décision — adultes; 成人のみ 🫀",
            model_name="modèle-ü",
            filler_order_number="FÜLLER-1",
        )
    ),
    "non_ascii_not_evaluated": _c(
        lambda: _not_evaluated(
            dataclasses.replace(UNICODE, patient_name="Müller^Jürgen"),
            not_evaluated_reason=("AGE", "Âge inférieur à 18 ans — ß"),
        ),
        message_time=MESSAGE_TIME_TZ,
    ),
    # missing and blank optional identifiers
    "minimal_identifiers": _c(lambda: _scored(MINIMAL)),
    "minimal_identifiers_not_evaluated": _c(lambda: _not_evaluated(MINIMAL), include_pdf=PDF),
    "minimal_with_source_key": _c(lambda: _scored(MINIMAL, source_key="src-key-1")),
    "orders_from_identifiers": _c(
        lambda: _scored(dataclasses.replace(FULL, placer_order_number="IDPL-1", filler_order_number="IDFL-2"))
    ),
    "filler_generated_with_placer": _c(lambda: _scored(FULL, placer_order_number="PL-only")),
    "blank_identifiers": _c(
        lambda: _scored(BLANKS),
        sending_facility=" ",
        receiving_application="\t",
        profile=OruProfile(include_pv1=True),
    ),
    "name_variants": _c(
        lambda: _scored(dataclasses.replace(FULL, patient_name="^Given^^^Suffix", patient_sex="O"))
    ),
    "name_family_only_partial_birth_date": _c(
        lambda: _scored(dataclasses.replace(FULL, patient_name="Family", patient_birth_date="1956"))
    ),
    "name_empty_components": _c(lambda: _scored(dataclasses.replace(FULL, patient_name="^^^^"))),
    # time zones: aware message, acquisition and result times
    "time_zones": _c(
        lambda: _scored(
            dataclasses.replace(
                FULL,
                acquisition_datetime=dt.datetime(
                    2013, 1, 25, 10, 59, 19, tzinfo=dt.timezone(dt.timedelta(hours=-8))
                ),
            ),
            result_time=dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        ),
        message_time=MESSAGE_TIME_TZ,
    ),
}


def build(name: str) -> bytes:
    """The ORU^R01 of case ``name``."""
    inp, kwargs = CASES[name]()
    return build_oru(inp, **kwargs)


def path_of(name: str) -> Path:
    """The fixture file of case ``name``."""
    return HERE / f"{name}.hl7"


def main() -> None:
    """Write (``--write``) or check the fixture files."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="(re)write the .hl7 fixtures")
    args = parser.parse_args()
    stale = []
    for name in CASES:
        data = build(name)
        if args.write:
            path_of(name).write_bytes(data)
        elif not path_of(name).exists() or path_of(name).read_bytes() != data:
            stale.append(name)
    if stale:
        raise SystemExit(f"fixtures differ from build_oru: {', '.join(stale)}")
    print(f"{len(CASES)} cases {'written' if args.write else 'match'}")


if __name__ == "__main__":
    main()
