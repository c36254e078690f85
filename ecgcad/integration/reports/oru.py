"""HL7 v2.5.1 ORU^R01 of a stenosis result (written directly as ER7) and our own validator of it.

Message layout (ER7, segments ended by ``\\r``, UTF-8, MSH-18 ``UNICODE UTF-8``)::

    MSH  -9 ORU^R01^ORU_R01  -10 control id  -11 P  -12 2.5.1  [-15/-16 by profile]
    PID  -3 PatientID^^^IssuerOfPatientID  -5 name (DICOM PN → XPN order)  -7 birth date  -8 sex
    PV1  when a visit number is known (or the profile asks): -2 U, -19 visit number
    ORC  -1 RE  -2 placer^  -3 filler^ECGCAD  -5 CM
    OBR  -1 1  -2 placer  -3 filler  -4 service code  -7 acquisition time  -18 accession (profile)
         -22 result time  -24 EC  -25 P | F | C (| X for not evaluated, by profile)
    NTE  -2 L: disclaimer (demonstration model), model identity, intended use
    per vessel (OBX-4 sub-ID 1 RCA, 2 LM, 3 LAD, 4 LCX):
      OBX NM   <V>-PROB^<V> stenosis probability^99ECGCAD  -5 p  -6 1^^UCUM  -7 <threshold
               -8 A (flagged) | N  -11 = OBR-25  -14 acquisition time  -19 result time
      OBX CWE  <V>-RISK^<V> stenosis risk^99ECGCAD  -5 15508007^High risk^SCT | 75976002^Low risk^SCT
    OBX CWE  ANY-FLAG^Any vessel flagged^99ECGCAD  -5 Y^Yes^HL70136 | N^No^HL70136  -8 A | N
    [OBX ED  PDF^Report PDF^99ECGCAD  -5 ^AP^PDF^Base64^<data>]
    not evaluated: instead of the vessel and overall OBX,
      OBX CWE  NOT-EVAL^Reason not evaluated^99ECGCAD  -5 <code>^<text>^99ECGCAD  -8 IND
               (-11 X and OBR-25 X when the profile's not_evaluated_mode is "X")

The probability is a plain number in [0, 1] (UCUM ``1``), the threshold is the reference range
``<t`` (values below it are not flagged). Local codes use the coding system ``99ECGCAD``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import logging
import re
from typing import Literal

from ecgcad.errors import BuildError
from ecgcad.integration.formats.ecg import EcgIdentifiers
from ecgcad.integration.reports.content import VESSELS, StenosisReportInput
from ecgcad.logsetup import uid_hash

logger = logging.getLogger(__name__)

HL7_VERSION = "2.5.1"
LOCAL_CODING_SYSTEM = "99ECGCAD"

#: HL7 table 0078 (Interpretation codes / abnormal flags), v2.5.1.
TABLE_0078 = frozenset("L H LL HH < > N A AA S R I MS VS NEG POS IND DET ND AC RR QCF TOX W U D B".split())
#: HL7 table 0085 (Observation result status), v2.5.1.
TABLE_0085 = frozenset("C D F I N O P R S U W X".split())
#: HL7 table 0123 (Result status), v2.5.1.
TABLE_0123 = frozenset("O I S A P C R F X Y Z".split())
#: HL7 table 0125 (Value type) — the subset this validator understands.
TABLE_0125 = frozenset(
    "AD CE CF CK CN CP CWE CX DT DTM ED FT MO NM PN RP SN ST TM TN TS TX XAD XCN XON XPN XTN".split()
)

HIGH_RISK = ("15508007", "High risk", "SCT")
LOW_RISK = ("75976002", "Low risk", "SCT")

_NM_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_TS_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,4})?)?)?)?)?)?([+-]\d{4})?$")
_CONTROL_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,20}$")


@dataclasses.dataclass(frozen=True, slots=True)
class OruProfile:
    """Site-specific placement choices of the ORU (configuration, not code).

    Parameters
    ----------
    include_pv1:
        Always send PV1 (otherwise only when a visit number is known).
    service_code:
        OBR-4 ``(identifier, text, coding system)``.
    accession_field:
        Where the accession number goes: ``"OBR-18"`` (placer field 1, default), ``"OBR-20"`` (filler
        field 1) or ``None``.
    not_evaluated_mode:
        ``"IND"``: OBX-8 ``IND`` with the reason, statuses as usual; ``"X"``: additionally OBR-25 and
        OBX-11 ``X`` ("results cannot be obtained").
    accept_ack_type, application_ack_type:
        MSH-15 / MSH-16 (``AL``, ``NE``, ``ER``, ``SU``) for enhanced acknowledgement mode; ``None``
        = original mode.
    """

    include_pv1: bool = False
    service_code: tuple[str, str, str] = ("ECGCAD-CAD4", "AI ECG coronary stenosis risk", LOCAL_CODING_SYSTEM)
    accession_field: Literal["OBR-18", "OBR-20"] | None = "OBR-18"
    not_evaluated_mode: Literal["IND", "X"] = "IND"
    accept_ack_type: Literal["AL", "NE", "ER", "SU"] | None = None
    application_ack_type: Literal["AL", "NE", "ER", "SU"] | None = None

    def __post_init__(self) -> None:
        if len(self.service_code) != 3 or not all(isinstance(p, str) and p for p in self.service_code):
            raise BuildError("service_code must be (identifier, text, coding system)")
        if self.accession_field not in ("OBR-18", "OBR-20", None):
            raise BuildError(f"unknown accession_field {self.accession_field!r}")
        if self.not_evaluated_mode not in ("IND", "X"):
            raise BuildError(f"unknown not_evaluated_mode {self.not_evaluated_mode!r}")
        for value in (self.accept_ack_type, self.application_ack_type):
            if value not in (None, "AL", "NE", "ER", "SU"):
                raise BuildError(f"unknown acknowledgement type {value!r}")


def control_id_for(result_id: int, result_version: int, attempt: int) -> str:
    """A unique MSH-10 for one delivery attempt of one result version (≤ 20 characters)."""
    if min(result_id, result_version, attempt) < 0:
        raise BuildError("control id parts must be non-negative")
    cid = f"E{result_id}V{result_version}A{attempt}"
    if len(cid) > 20:
        raise BuildError("control id longer than 20 characters")
    return cid


def escape(text: str) -> str:
    """Escape ER7 delimiters in free text (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``) and drop segment breaks."""
    out = (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )
    return out.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _components(*parts: str | None) -> str:
    return "^".join(escape(p or "") for p in parts).rstrip("^")


def _composite(text: str) -> str:
    """A composite field as hl7apy wrote it: blank components emptied, trailing empty ones cut.

    ``text`` is components joined by ``^`` whose data is already escaped (:func:`escape`).
    """
    if "^" not in text:
        return text if text.strip() else ""
    return "^".join(part if part.strip() else "" for part in text.split("^")).rstrip("^")


#: A date/time that hl7apy's DTM writes back unchanged: ``YYYY[MM[DD[HH[MM[SS]]]]]`` (ASCII digits, year ≥
#: 1000) with an optional offset that hl7apy accepts (``+0000`` … ``+1459``, ``-0000`` … ``-1259``).
_PLAIN_DTM_RE = re.compile(
    r"[1-9][0-9]{3}(?:[0-9]{2}){0,5}(?:\+(?:1[0-4]|0[0-9])[0-5][0-9]|-(?:1[0-2]|0[0-9])[0-5][0-9])?"
)
#: hl7apy's offset finder (``hl7apy.utils._split_offset``), verbatim: ``\\d`` includes non-ASCII digits.
_HL7APY_OFFSET_RE = re.compile(r"\d*((\+(1[0-4]|0[0-9])|(-(1[0-2]|0[0-9])))([0-5][0-9]))$")
_DATE_FORMATS = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d"}
_TIME_FORMATS = {0: "", 2: "%H", 4: "%H%M", 6: "%H%M%S"}


def _dtm(text: str) -> str:
    """A DTM component as hl7apy wrote it (it re-formats what it can parse, else copies the text).

    Our own time stamps (:func:`_ts`, year ≥ 1000) and ordinary dates come back unchanged (fast path);
    anything else (a copied birth date such as ``"197011 1"``, a year before 1000, non-ASCII digits) takes
    hl7apy's route: offset split off, format chosen by length, ``strptime`` then ``strftime``.
    """
    if _PLAIN_DTM_RE.fullmatch(text):
        return text
    match = _HL7APY_OFFSET_RE.search(text)
    offset = match.group(1) if match else ""
    value = text.replace(offset, "") if offset else text
    date_format = _DATE_FORMATS.get(len(value[:8]))
    rest = value[8:]
    microsec = 4
    time_format = _TIME_FORMATS.get(len(rest))
    if time_format is None and 8 <= len(rest) <= 11 and rest[6] == ".":
        time_format, microsec = "%H%M%S.%f", len(rest) - 7
    if date_format is None or time_format is None:
        return text
    fmt = date_format + time_format
    try:
        parsed = dt.datetime.strptime(value, fmt)
    except ValueError:
        return text
    out = parsed.strftime(fmt)
    if time_format.endswith("%f"):
        out = out[: -(6 - microsec)]
    return out + offset


#: hl7apy's escaping of a text value: a backslash that is not part of an escape sequence becomes ``\\E\\``.
_LONE_ESCAPE_RE = re.compile(r"(?<!\\[HNFSTRE])\\(?![HNFSTRE]\\)")


def _raw_composite(value: str, known: int) -> str:
    """An unescaped value given to a composite field, as hl7apy wrote it (``^``/``&`` kept as delimiters).

    ``known`` is the number of components of the field's data type: blank ones among them are emptied,
    blank ones beyond them are dropped (hl7apy appends those without keeping their position).
    """
    components = []
    for index, component in enumerate(value.split("^")):
        if not component.strip():
            if index < known:
                components.append("")
            continue
        subs = []
        for sub in component.split("&"):
            sub = sub.replace("|", "\\F\\").replace("~", "\\R\\")
            subs.append(_LONE_ESCAPE_RE.sub(lambda _m: "\\E\\", sub) if "\\" in sub else sub)
        components.append("&".join(subs))
    return "^".join(components).rstrip("^")


def _ts(when: dt.datetime | None) -> str:
    if when is None:
        return ""
    text = when.strftime("%Y%m%d%H%M%S")
    if when.tzinfo is not None:
        text += when.strftime("%z")
    return _dtm(text)


def _nm(value: float) -> str:
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _xpn(dicom_name: str | None) -> str:
    """DICOM PN ``family^given^middle^prefix^suffix`` → HL7 XPN ``family^given^middle^suffix^prefix``."""
    if not dicom_name:
        return ""
    alphabetic = dicom_name.split("=")[0]
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return _components(family, given, middle, suffix, prefix)


def _segment(name: str, fields: dict[int, str]) -> str:
    """One segment: ``fields`` by field number; unset fields up to the highest set one are empty."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return name + "|" + "|".join(values)


def filler_order_number_for(inp: StenosisReportInput) -> str:
    """The filler order number: copied when known, else ours, stable across result versions."""
    if inp.effective_filler_order_number:
        return inp.effective_filler_order_number
    return "ECG" + hashlib.sha256(inp.uid_source_key.encode("utf-8")).hexdigest()[:16].upper()


def build_oru(
    inp: StenosisReportInput,
    *,
    control_id: str,
    result_status: Literal["P", "F", "C"] = "P",
    sending_application: str = "ECGCAD",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    profile: OruProfile | None = None,
    include_pdf: bytes | None = None,
    message_time: dt.datetime | None = None,
    processing_id: Literal["P", "T", "D"] = "P",
) -> bytes:
    """Build the ORU^R01 (v2.5.1) of one stenosis result.

    The message is written directly as ER7 (no message object): every copied value is escaped
    (:func:`escape`), and the output is byte-for-byte what the former hl7apy-based builder wrote
    (``tests/results/golden_oru``), including its quirks: blank components of composite fields are
    emptied, fields that were set stay in place even when empty, and DTM values go through hl7apy's
    parse-and-format round trip.

    Parameters
    ----------
    inp:
        The validated report input.
    control_id:
        MSH-10, unique per delivery attempt (see :func:`control_id_for`); 1–20 characters
        ``[A-Za-z0-9._-]``.
    result_status:
        OBR-25 / OBX-11: ``P`` preliminary (default), ``F`` final, ``C`` correction. A corrected result
        (``result_version > 1``) must be sent with ``C``.
    sending_application, sending_facility, receiving_application, receiving_facility:
        MSH-3 … MSH-6 (namespace ids).
    profile:
        Site profile (field placement); ``None`` = :class:`OruProfile` defaults.
    include_pdf:
        The report PDF to embed as an ``ED`` OBX, or ``None``.
    message_time:
        MSH-7; ``None`` = now (UTC offset included).
    processing_id:
        MSH-11 (``P`` production, ``T`` training, ``D`` debugging).

    Returns
    -------
    bytes
        The message, UTF-8, segments separated by ``\\r`` (no MLLP framing).

    Raises
    ------
    BuildError
        A bad argument, or the built message fails the fast checks of :func:`validate_oru` (segment
        order, tables, OBX-5 against OBX-2, required fields).
    """
    profile = profile or OruProfile()
    _check_build_arguments(inp, control_id, result_status, include_pdf)
    not_evaluated_x = not inp.scorable and profile.not_evaluated_mode == "X"
    # OBX-11 always equals OBR-25 in what we send.
    status = "X" if not_evaluated_x else result_status
    segments = [
        _msh_segment(
            control_id=control_id,
            message_time=message_time or dt.datetime.now().astimezone(),
            sending_application=sending_application,
            sending_facility=sending_facility,
            receiving_application=receiving_application,
            receiving_facility=receiving_facility,
            processing_id=processing_id,
            profile=profile,
        ),
        _pid_segment(inp.identifiers),
        *_pv1_segments(inp.identifiers, profile),
        _orc_segment(inp),
        _obr_segment(inp, profile, result_status=status),
        *_nte_segments(inp),
        *_obx_segments(inp, _observations(inp, include_pdf), result_status=status),
        "",  # the last segment is ended by "\r" too
    ]
    data = "\r".join(segments).encode("utf-8")
    problems = validate_oru(data, structure=False)
    if problems:
        raise BuildError("built ORU is invalid: " + "; ".join(problems))
    logger.info(
        "built ORU msh10=%s source=%s status=%s evaluated=%s pdf=%s",
        control_id,
        uid_hash(inp.uid_source_key),
        status,
        inp.scorable,
        include_pdf is not None,
    )
    return data


# -- segments -------------------------------------------------------------------------------------------


def _check_build_arguments(
    inp: StenosisReportInput, control_id: str, result_status: str, include_pdf: bytes | None
) -> None:
    """Refuse arguments :func:`build_oru` cannot turn into a valid message.

    Parameters
    ----------
    inp:
        The report input (its result version and Patient ID are checked).
    control_id:
        MSH-10.
    result_status:
        OBR-25 as asked for.
    include_pdf:
        The PDF to embed, or ``None``.

    Raises
    ------
    BuildError
        The first argument found wrong, in the order of the parameters above (control id, result status,
        a correction not sent as ``C``, a PDF that is not one, a missing Patient ID).
    """
    if not _CONTROL_ID_RE.match(control_id or ""):
        raise BuildError("control_id must be 1–20 characters [A-Za-z0-9._-]")
    if result_status not in ("P", "F", "C"):
        raise BuildError(f"result_status must be P, F or C, got {result_status!r}")
    if inp.result_version > 1 and result_status != "C":
        raise BuildError("a corrected result (result_version > 1) is sent with result status C")
    if include_pdf is not None and not bytes(include_pdf).startswith(b"%PDF-"):
        raise BuildError("include_pdf is not a PDF document")
    if not inp.identifiers.patient_id:
        raise BuildError("the ORU needs a Patient ID (PID-3)")


def _msh_segment(
    *,
    control_id: str,
    message_time: dt.datetime,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    processing_id: str,
    profile: OruProfile,
) -> str:
    """The MSH segment (message header).

    Parameters
    ----------
    control_id:
        MSH-10, already checked.
    message_time:
        MSH-7.
    sending_application, sending_facility, receiving_application, receiving_facility:
        MSH-3 … MSH-6; MSH-4 … MSH-6 are left out when empty.
    processing_id:
        MSH-11; a value other than ``P``, ``T``, ``D`` is written as hl7apy wrote it.
    profile:
        MSH-15 / MSH-16 (acknowledgement types), when set.

    Returns
    -------
    str
        ``MSH|^~\\&|…`` (MSH-1 is the field separator itself and MSH-2 the encoding characters).
    """
    msh = {
        3: _composite(escape(sending_application)),
        7: _ts(message_time),
        9: "ORU^R01^ORU_R01",
        10: control_id,
        11: processing_id if processing_id in ("P", "T", "D") else _raw_composite(processing_id, 2),
        12: HL7_VERSION,
        18: "UNICODE UTF-8",
    }
    if sending_facility:
        msh[4] = _composite(escape(sending_facility))
    if receiving_application:
        msh[5] = _composite(escape(receiving_application))
    if receiving_facility:
        msh[6] = _composite(escape(receiving_facility))
    if profile.accept_ack_type:
        msh[15] = profile.accept_ack_type
    if profile.application_ack_type:
        msh[16] = profile.application_ack_type
    return "MSH|^~\\&" + _segment("", {n - 2: v for n, v in msh.items()})


def _pid_segment(ident: EcgIdentifiers) -> str:
    """The PID segment (patient identification).

    Parameters
    ----------
    ident:
        The copied identifiers: PID-3 Patient ID and its issuer, PID-5 name (DICOM PN → XPN order),
        PID-7 birth date and PID-8 sex when known.

    Returns
    -------
    str
        The segment.
    """
    pid = {
        1: "1",
        3: _composite(_components(ident.patient_id, None, None, ident.issuer_of_patient_id)),
        # PID-5 is required: a name that is missing or blank (e.g. "^^" or spaces) is sent as HL7 null.
        5: _composite(_xpn(ident.patient_name)) or '""',
    }
    if ident.patient_birth_date:
        birth_date = _composite(escape(ident.patient_birth_date))
        pid[7] = _dtm(birth_date) if birth_date else ""
    if ident.patient_sex:
        pid[8] = escape(ident.patient_sex)
    return _segment("PID", pid)


def _pv1_segments(ident: EcgIdentifiers, profile: OruProfile) -> list[str]:
    """The PV1 segment (patient visit), when a visit number is known or the profile asks for it.

    Parameters
    ----------
    ident:
        The copied identifiers: PV1-19 visit number.
    profile:
        ``include_pv1``: send PV1 even without a visit number.

    Returns
    -------
    list[str]
        The segment, or no segment.
    """
    if not (ident.visit_number or profile.include_pv1):
        return []
    pv1 = {1: "1", 2: "U"}
    if ident.visit_number:
        pv1[19] = _composite(escape(ident.visit_number))
    return [_segment("PV1", pv1)]


def _filler_entity_identifier(inp: StenosisReportInput) -> str:
    """ORC-3 / OBR-3: a copied filler order number as is, ours with namespace ``ECGCAD``."""
    filler = filler_order_number_for(inp)
    if inp.effective_filler_order_number:
        return _composite(escape(filler))
    return _composite(_components(filler, "ECGCAD"))


def _orc_segment(inp: StenosisReportInput) -> str:
    """The ORC segment (common order): ``RE`` (observations to follow), order numbers, ``CM`` (complete).

    Parameters
    ----------
    inp:
        The report input: ORC-2 placer order number (when known), ORC-3 filler order number.

    Returns
    -------
    str
        The segment.
    """
    orc = {1: "RE", 3: _filler_entity_identifier(inp), 5: "CM"}
    placer = inp.effective_placer_order_number
    if placer:
        orc[2] = _composite(escape(placer))
    return _segment("ORC", orc)


def _obr_segment(inp: StenosisReportInput, profile: OruProfile, *, result_status: str) -> str:
    """The OBR segment (observation request).

    Parameters
    ----------
    inp:
        The report input: OBR-2 placer and OBR-3 filler order numbers, OBR-7 acquisition time, the
        accession number, OBR-22 result time.
    profile:
        OBR-4 service code and where the accession number goes (OBR-18, OBR-20 or nowhere).
    result_status:
        OBR-25 (``P``, ``F``, ``C``, or ``X`` for a not-evaluated result by profile).

    Returns
    -------
    str
        The segment; OBR-24 is ``EC`` (electrocardiac).
    """
    obr = {
        1: "1",
        3: _filler_entity_identifier(inp),
        4: _composite(_components(*profile.service_code)),
    }
    placer = inp.effective_placer_order_number
    if placer:
        obr[2] = _composite(escape(placer))
    if inp.identifiers.acquisition_datetime:
        obr[7] = _ts(inp.identifiers.acquisition_datetime)
    accession = inp.effective_accession_number
    if accession and profile.accession_field == "OBR-18":
        obr[18] = escape(accession)
    elif accession and profile.accession_field == "OBR-20":
        obr[20] = escape(accession)
    obr[22] = _ts(inp.result_time)
    obr[24] = "EC"
    obr[25] = result_status
    return _segment("OBR", obr)


def _nte_segments(inp: StenosisReportInput) -> list[str]:
    """The NTE segments of the order (comment source ``L``, ancillary).

    Parameters
    ----------
    inp:
        The report input: disclaimer (demonstration model only), model identity, intended use.

    Returns
    -------
    list[str]
        One NTE per note, NTE-1 counting from 1.
    """
    notes = []
    if inp.disclaimer:
        notes.append(inp.disclaimer)
    notes.append(
        f"Model {inp.model_name} version {inp.model_version}, checkpoint SHA-256 {inp.checkpoint_sha256}; "
        f"window policy {inp.window_policy}; preliminary, unverified machine result"
    )
    notes.append("Intended use: " + inp.intended_use)
    return [f"NTE|{i}|L|{escape(note)}" for i, note in enumerate(notes, start=1)]


def _observations(inp: StenosisReportInput, include_pdf: bytes | None) -> list[dict[int, str]]:
    """The OBX fields of each observation, in message order, without the fields all OBX share.

    Parameters
    ----------
    inp:
        The report input.
    include_pdf:
        The PDF to embed, or ``None``.

    Returns
    -------
    list[dict[int, str]]
        Scored: per vessel its probability and risk (:func:`_vessel_observations`), then whether any
        vessel is flagged; not evaluated: the reason instead; then the PDF, if any.
    """
    observations: list[dict[int, str]] = []
    if inp.scorable:
        for sub_id, vessel in enumerate(VESSELS, start=1):
            observations.extend(_vessel_observations(inp, vessel, sub_id))
        observations.append(_any_flag_observation(inp))
    else:
        observations.append(_not_evaluated_observation(inp))
    if include_pdf is not None:
        observations.append(_pdf_observation(include_pdf))
    return observations


def _vessel_observations(inp: StenosisReportInput, vessel: str, sub_id: int) -> list[dict[int, str]]:
    """The probability (``NM``) and risk (``CWE``) observations of one vessel.

    Parameters
    ----------
    inp:
        A scored report input.
    vessel:
        One of :data:`~ecgcad.integration.reports.content.VESSELS`.
    sub_id:
        OBX-4, the same for both observations of the vessel.

    Returns
    -------
    list[dict[int, str]]
        OBX fields 2 … 8: the probability with unit UCUM ``1`` and reference range ``<threshold``, then
        the risk band (SNOMED CT high / low risk); OBX-8 ``A`` when the vessel is flagged, else ``N``.
    """
    name = vessel.upper()
    flag = "A" if inp.flags[vessel] else "N"
    band = HIGH_RISK if inp.flags[vessel] else LOW_RISK
    probability = {
        2: "NM",
        3: f"{name}-PROB^{name} stenosis probability^{LOCAL_CODING_SYSTEM}",
        4: str(sub_id),
        5: _nm(inp.probabilities[vessel]),
        6: "1^^UCUM",
        7: "<" + _nm(inp.thresholds[vessel]),
        8: flag,
    }
    risk = {
        2: "CWE",
        3: f"{name}-RISK^{name} stenosis risk^{LOCAL_CODING_SYSTEM}",
        4: str(sub_id),
        5: "^".join(band),
        8: flag,
    }
    return [probability, risk]


def _any_flag_observation(inp: StenosisReportInput) -> dict[int, str]:
    """The ``ANY-FLAG`` observation: whether any vessel is flagged (HL7 table 0136 Y / N)."""
    any_flag = inp.any_flagged
    return {
        2: "CWE",
        3: f"ANY-FLAG^Any vessel flagged^{LOCAL_CODING_SYSTEM}",
        5: "Y^Yes^HL70136" if any_flag else "N^No^HL70136",
        8: "A" if any_flag else "N",
    }


def _not_evaluated_observation(inp: StenosisReportInput) -> dict[int, str]:
    """The ``NOT-EVAL`` observation of a not-evaluated result: the coded reason, OBX-8 ``IND``."""
    assert inp.not_evaluated_reason is not None
    code, text = inp.not_evaluated_reason
    return {
        2: "CWE",
        3: f"NOT-EVAL^Reason not evaluated^{LOCAL_CODING_SYSTEM}",
        5: _components(code, text, LOCAL_CODING_SYSTEM),
        8: "IND",
    }


def _pdf_observation(pdf: bytes) -> dict[int, str]:
    """The ``ED`` observation carrying the report PDF (``^AP^PDF^Base64^<data>``)."""
    return {
        2: "ED",
        3: f"PDF^Report PDF^{LOCAL_CODING_SYSTEM}",
        5: "^AP^PDF^Base64^" + base64.b64encode(bytes(pdf)).decode("ascii"),
    }


def _obx_segments(
    inp: StenosisReportInput, observations: list[dict[int, str]], *, result_status: str
) -> list[str]:
    """The OBX segments: each observation numbered (OBX-1) and given the fields all of them share.

    Parameters
    ----------
    inp:
        The report input: OBX-14 acquisition time (when known), OBX-19 result time.
    observations:
        OBX fields of each observation (:func:`_observations`).
    result_status:
        OBX-11, equal to OBR-25.

    Returns
    -------
    list[str]
        The segments, in the order of ``observations``.
    """
    common = {11: result_status, 19: _ts(inp.result_time)}
    if inp.identifiers.acquisition_datetime:
        common[14] = _ts(inp.identifiers.acquisition_datetime)
    return [
        _segment("OBX", {1: str(set_id), **fields, **common})
        for set_id, fields in enumerate(observations, start=1)
    ]


# -- validation -----------------------------------------------------------------------------------------


def validate_oru(message: bytes, *, structure: bool = True) -> list[str]:
    """Check an ORU^R01 for what hl7apy does not: tables, OBX-5 against OBX-2, required fields.

    Checks: MSH-9 ``ORU^R01^ORU_R01``, MSH-10, MSH-12 ``2.5.1``; the segment order MSH, PID, [PV1],
    ORC, OBR, NTE*, (OBX, NTE*)* (hl7apy structure validation); PID-3; ORC-1 ``RE``; OBR-4; OBR-25 in
    table 0123; OBX-2 in table 0125, OBX-3 present, OBX-5 valued and valid for OBX-2 (``NM`` a number,
    ``CWE``/``CE`` an identifier or text, ``ED`` five components with valid Base64, ``TS``/``DTM`` a
    timestamp), OBX-8 in table 0078, OBX-11 required and in table 0085 and equal to OBR-25 (or ``X``).

    Parameters
    ----------
    message:
        ER7 bytes (UTF-8), segments ended by ``\\r`` (``\\n`` tolerated).
    structure:
        Also re-parse with hl7apy to validate the message structure (≈ 50 ms). :func:`build_oru` skips
        it: its writer emits the segments in the fixed ORU_R01 order, which the fast checks verify here.

    Returns
    -------
    list[str]
        Problems found, empty when the message passes.
    """
    problems: list[str] = []
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        return ["message is not UTF-8"]
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        return ["message does not start with MSH"]
    field_sep = segments[0][3]
    comp_sep = segments[0][4]
    parsed: list[tuple[str, list[str]]] = []
    for seg in segments:
        fields = seg.split(field_sep)
        if seg.startswith("MSH"):
            fields = ["MSH", field_sep, *fields[1:]]
        parsed.append((fields[0], fields))

    def get(fields: list[str], n: int) -> str:
        return fields[n] if len(fields) > n else ""

    msh = parsed[0][1]
    if get(msh, 9) != f"ORU{comp_sep}R01{comp_sep}ORU_R01":
        problems.append(f"MSH-9 must be ORU^R01^ORU_R01, got {get(msh, 9)!r}")
    if not get(msh, 10):
        problems.append("MSH-10 (message control id) is empty")
    if not get(msh, 7):
        problems.append("MSH-7 (message time) is empty")
    if get(msh, 12).split(comp_sep)[0] != HL7_VERSION:
        problems.append(f"MSH-12 must be {HL7_VERSION}, got {get(msh, 12)!r}")
    if structure:
        problems.extend(_structure_problems(text.replace("\n", "\r")))
    else:
        letters = {"MSH": "M", "PID": "P", "PV1": "V", "ORC": "C", "OBR": "R", "NTE": "N", "OBX": "X"}
        shape = "".join(letters.get(name, "?") for name, _ in parsed)
        if not re.fullmatch(r"MPV?CRN*(XN*)*", shape):
            problems.append("segments are not in the order MSH, PID, [PV1], ORC, OBR, NTE*, (OBX, NTE*)*")

    names = [name for name, _ in parsed]
    for required in ("PID", "ORC", "OBR"):
        if required not in names:
            problems.append(f"missing {required} segment")
    obr_status = ""
    for name, fields in parsed:
        if name == "PID" and not get(fields, 3).split(comp_sep)[0]:
            problems.append("PID-3 (patient identifier) is empty")
        elif name == "ORC" and get(fields, 1) != "RE":
            problems.append(f"ORC-1 must be RE, got {get(fields, 1)!r}")
        elif name == "OBR":
            if not get(fields, 4):
                problems.append("OBR-4 (universal service identifier) is empty")
            obr_status = get(fields, 25)
            if obr_status not in TABLE_0123:
                problems.append(f"OBR-25 {obr_status!r} is not in table 0123")
        elif name == "OBX":
            problems.extend(_obx_problems(fields, comp_sep, obr_status))
    if "OBX" not in names:
        problems.append("no OBX segment")
    return problems


def _structure_problems(er7: str) -> list[str]:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    try:
        msg = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
        msg.validate()
    except HL7apyException as exc:
        return [f"hl7apy structure: {exc}"]
    except Exception as exc:  # noqa: BLE001 - hl7apy raises plain errors on some malformed input
        return [f"hl7apy could not parse the message: {type(exc).__name__}: {exc}"]
    return []


def _obx_problems(fields: list[str], comp_sep: str, obr_status: str) -> list[str]:
    def get(n: int) -> str:
        return fields[n] if len(fields) > n else ""

    where = f"OBX {get(1) or '?'}"
    problems = []
    value_type, value = get(2), get(5)
    if value_type not in TABLE_0125:
        problems.append(f"{where}: OBX-2 {value_type!r} is not in table 0125")
    if not get(3):
        problems.append(f"{where}: OBX-3 (observation identifier) is empty")
    status = get(11)
    if not status:
        problems.append(f"{where}: OBX-11 (result status) is required")
    elif status not in TABLE_0085:
        problems.append(f"{where}: OBX-11 {status!r} is not in table 0085")
    elif obr_status and status not in (obr_status, "X"):
        problems.append(f"{where}: OBX-11 {status!r} does not match OBR-25 {obr_status!r}")
    for flag in get(8).split("~"):
        if flag and flag not in TABLE_0078:
            problems.append(f"{where}: OBX-8 {flag!r} is not in table 0078")
    if not value:
        if status not in ("X", "D"):
            problems.append(f"{where}: OBX-5 is empty")
        return problems
    components = value.split(comp_sep)
    if value_type == "NM" and not _NM_RE.match(value):
        problems.append(f"{where}: OBX-5 {value!r} is not a number (OBX-2 NM)")
    elif value_type in ("CWE", "CE") and not (components[0] or (len(components) > 1 and components[1])):
        problems.append(f"{where}: OBX-5 has neither identifier nor text (OBX-2 {value_type})")
    elif value_type == "ED":
        if len(components) != 5 or components[3] not in ("Base64", "Hex", "A"):
            problems.append(f"{where}: OBX-5 is not source^type^subtype^encoding^data (OBX-2 ED)")
        elif components[3] == "Base64":
            try:
                base64.b64decode(components[4], validate=True)
            except (binascii.Error, ValueError):
                problems.append(f"{where}: OBX-5 data is not valid Base64")
    elif value_type in ("TS", "DTM", "DT") and not _TS_RE.match(components[0]):
        problems.append(f"{where}: OBX-5 {value!r} is not a timestamp (OBX-2 {value_type})")
    return problems
