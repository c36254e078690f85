"""The fast encoder writes exactly the bytes pydicom writes, for every SR and PDF we build and beyond.

The reference is ``ds.save_as(buffer, enforce_file_format=True)`` on a copy (Explicit VR Little Endian, as
the builders' file meta says) for :func:`encode_part10`, and ``write_dataset`` on an Explicit VR Little
Endian buffer for :func:`encode_dataset`. The SR and PDF cases must be encoded by the fast path itself
(pydicom's whole-object writer is made to fail); elements of other forms go through pydicom's element
writer and still match.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import DA, DS, DT, IS, TM

from ecgcad.integration.reports import dicom_encode
from ecgcad.integration.reports.dicom_encode import encode_dataset, encode_part10
from ecgcad.integration.reports.pdf import build_encapsulated_pdf
from ecgcad.integration.reports.sr import build_stenosis_sr
from tests.results.conftest import make_input
from tests.results.test_sr_equivalence import CASES, SOURCES, case_input

PDF = b"%PDF-1.4\n%test\n%%EOF\n"


def pydicom_part10(ds: Dataset) -> bytes:
    """What pydicom writes for ``ds`` (on a copy: dcmwrite sets Pixel Data's length flag, PN caches)."""
    buffer = io.BytesIO()
    copy.deepcopy(ds).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def assert_encodes_as_pydicom(ds: Dataset) -> bytes:
    """``encode_part10(ds)`` equals pydicom's bytes, computed first (on a copy of ``ds`` as it is now)."""
    expected = pydicom_part10(ds)
    encoded = encode_part10(ds)
    assert encoded == expected
    return encoded


def pydicom_dataset(ds: Dataset, parent_encoding: Any = "iso8859") -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, copy.deepcopy(ds), parent_encoding)
    return fp.getvalue()


@pytest.fixture(scope="module")
def sources(ecg_dataset: Dataset, ecg_bytes: bytes) -> dict[str, tuple[Dataset, bytes]]:
    out = {"as_is": (ecg_dataset, ecg_bytes)}
    for name, factory in SOURCES.items():
        if factory is not None:
            ds = factory(ecg_dataset)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out[name] = (ds, buffer.getvalue())
    return out


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the elements pydicom's element writer writes; pydicom's whole-object writers fail."""
    calls = {"elements": 0}
    element_writer = dicom_encode.write_data_element

    def counting(*args: Any, **kwargs: Any) -> None:
        calls["elements"] += 1
        element_writer(*args, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the whole object went to pydicom's writer")

    monkeypatch.setattr(dicom_encode, "write_data_element", counting)
    monkeypatch.setattr(dicom_encode, "dcmwrite", refuse)
    monkeypatch.setattr(dicom_encode, "write_dataset", refuse)
    return calls


# -- the objects we send ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sr", "pdf"])
@pytest.mark.parametrize("name", list(CASES))
def test_sr_and_pdf_encode_exactly_as_pydicom_writes_them(name, kind, sources, counted):
    inp, kwargs = case_input(name, sources)
    ds = build_stenosis_sr(inp, **kwargs) if kind == "sr" else build_encapsulated_pdf(inp, PDF)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    expected = pydicom_part10(ds)
    assert encode_part10(ds) == expected
    # Only elements kept raw from the source (in a sequence copied unchanged) go through pydicom's writer.
    if name != "latin1_source_with_sequences":
        assert counted["elements"] == 0
    assert pydicom_part10(ds) == expected  # the object itself is unchanged
    body = expected[132 + 12 + int.from_bytes(expected[140:144], "little") :]
    assert encode_dataset(ds) == body


def test_sequences_copied_raw_from_the_source_match(sources, counted):
    """The Latin-1 source's sequences are copied undecoded (pydicom writes them as read)."""
    inp, kwargs = case_input("latin1_source_with_sequences", sources)
    ds = build_stenosis_sr(inp, **kwargs)
    assert_encodes_as_pydicom(ds)
    assert counted["elements"] > 0  # the raw elements inside those sequences


def test_non_ascii_text_and_names_follow_the_sr_character_set(ecg_dataset, ecg_bytes, counted):
    """ISO_IR 192: names and text in UTF-8 (multi-byte characters, odd byte counts padded)."""
    inp = make_input(
        ecg_dataset,
        ecg_bytes,
        model_name="ëcg–fóunder 心",
        intended_use="Für Erwachsene – keine Diagnose. Ωμέγα.",
    )
    ds = build_stenosis_sr(inp, manufacturer="Hôpital Général", institution_name="Hôpital Général")
    ds.PatientName = "Müller^Jürgen=山田^太郎"
    ds.StudyDescription = "Ruhe-EKG (Größe) ű"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert "Müller".encode() in assert_encodes_as_pydicom(ds)
    assert counted["elements"] == 0


def test_encoding_twice_gives_the_same_bytes_and_shared_items_are_encoded_alike(sources):
    inp, _ = case_input("scored", sources)
    ds = build_stenosis_sr(inp)
    first = encode_part10(ds)
    assert encode_part10(ds) == first
    # The vessel groups share their algorithm items: a change to one shows in every group, as in pydicom.
    group = ds.ContentSequence[-2].ContentSequence[0]
    shared = next(
        item for item in group.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111001"
    )
    shared.TextValue = "renamed algorithm"
    assert assert_encodes_as_pydicom(ds).count(b"renamed algorithm") == 4


# -- other forms: the element fallback and the whole-object fallback --------------------------------------


def _plain(**meta: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = meta.get("transfer_syntax", ExplicitVRLittleEndian)
    return ds


def test_unusual_vrs_go_through_pydicom_element_writer_and_still_match(counted):
    ds = _plain()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.add_new(0x00209165, "AT", [0x00100010, 0x00100020])  # Dimension Index Pointer: AT, multi-valued
    ds.add_new(0x00091010, "UN", b"\x01\x02\x03")  # private, unknown, odd length (UN is not padded)
    ds.add_new(0x00090010, "LO", "ECGCAD TEST")
    ds.add_new(0x00720080, "SV", [-(2**40), 7])  # 64-bit VRs
    ds.add_new(0x0072007F, "UV", [2**63])
    ds.add_new(0x00189219, "SS", [-5, 6])
    ds.add_new(0x00281052, "DS", [DS("1.5"), DS("-0.25")])
    ds.add_new(0x00200013, "IS", IS("12"))
    ds.add_new(0x00660040, "UL", [1, 2, 3])
    ds.add_new(0x00660041, "FL", 1.5)
    ds.add_new(0x00660023, "OW", b"\x01\x00\x02")
    ds.add_new(0x00080090, "PN", ["Müller^Jürgen", "Núñez^José"])  # Latin-1, multi-valued
    ds.add_new(0x00081030, "LO", "Größe")
    ds.add_new(0x00400280, "ST", "")  # empty
    ds.add_new(0x00080012, "DA", DA(dt.date(2024, 5, 6)))  # formatted, no original string
    ds.add_new(0x00080013, "TM", TM(dt.time(7, 8, 9, 120000)))
    ds.add_new(0x0008002A, "DT", DT(dt.datetime(2024, 5, 6, 7, 8, 9)))
    ds.add_new(0x00180015, "CS", ["CHEST", "HEART"])
    ds.add_new(0x00081150, "UI", "1.2.3")
    ds.add_new(0x00280000, "UL", 99)  # a retired group length: pydicom leaves it out
    ds.add_new(0x00180010, "LO", "x" * 70000)  # too long for a 16-bit length: pydicom writes it as UN
    with pytest.warns(UserWarning, match="64 kByte"):
        expected = pydicom_part10(ds)
    counted["elements"] = 0
    with pytest.warns(UserWarning, match="64 kByte"):
        assert encode_part10(ds) == expected
    assert counted["elements"] == 3  # AT, UN and the over-long LO


def test_sequences_and_items_of_undefined_length_are_kept(counted):
    ds = _plain()
    item = Dataset()
    item.CodeValue = "1"
    item.is_undefined_length_sequence_item = True
    other = Dataset()
    other.CodeValue = "22"
    ds.ConceptNameCodeSequence = Sequence([item, other])
    ds["ConceptNameCodeSequence"].is_undefined_length = True
    ds.ContentSequence = Sequence([])
    ds["ContentSequence"].is_undefined_length = True
    ds.ReferencedSOPSequence = []
    encoded = assert_encodes_as_pydicom(ds)
    assert counted["elements"] == 0
    assert b"\xfe\xff\xdd\xe0" in encoded and b"\xfe\xff\x0d\xe0" in encoded  # delimiters


def test_other_character_sets_and_a_nested_character_set(counted):
    ds = _plain()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]  # Japanese with escape sequences
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.StudyDescription = "心電図"
    nested = Dataset()
    nested.SpecificCharacterSet = "ISO_IR 144"  # Cyrillic inside a sequence item
    nested.CodeMeaning = "Электрокардиограмма"
    plain = Dataset()
    plain.CodeMeaning = "inherits 心"
    ds.ConceptNameCodeSequence = [nested, plain]
    assert_encodes_as_pydicom(ds) and counted["elements"] == 0
    assert encode_dataset(nested) == pydicom_dataset(nested)
    assert encode_dataset(plain, parent_encoding="ISO_IR 192") == pydicom_dataset(plain, "ISO_IR 192")


def test_ambiguous_vr_and_other_transfer_syntaxes_are_written_by_pydicom(monkeypatch):
    whole = []
    writer = dicom_encode.dcmwrite
    monkeypatch.setattr(dicom_encode, "dcmwrite", lambda *a, **k: whole.append(1) or writer(*a, **k))
    ds = _plain()
    ds.add_new(0x00280106, "US or SS", 3)  # Smallest Image Pixel Value: VR from Pixel Representation
    ds.PixelRepresentation = 1
    assert b"\x28\x00\x06\x01SS" in assert_encodes_as_pydicom(ds)
    implicit = _plain(transfer_syntax=ImplicitVRLittleEndian)
    implicit.PatientID = "P1"
    assert b"\x10\x00\x20\x00LO" not in assert_encodes_as_pydicom(implicit)  # no VRs in Implicit VR
    assert len(whole) == 2


def test_a_dataset_read_from_a_file_matches(ecg_bytes):
    """The source ECG as read: raw elements written as read, waveform (OB or OW) and all."""
    assert_encodes_as_pydicom(pydicom.dcmread(io.BytesIO(ecg_bytes)))
    expected = pydicom_dataset(pydicom.dcmread(io.BytesIO(ecg_bytes)))
    assert encode_dataset(pydicom.dcmread(io.BytesIO(ecg_bytes))) == expected


def test_file_meta_is_completed_as_pydicom_completes_it(sources):
    inp, _ = case_input("scored", sources)
    ds = build_stenosis_sr(inp)
    del ds.file_meta.ImplementationVersionName
    del ds.file_meta.FileMetaInformationGroupLength
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"  # stale: the data set's UID is written
    encoded = assert_encodes_as_pydicom(ds)
    assert "ImplementationVersionName" not in ds.file_meta  # the caller's meta is not changed
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3"
    meta = pydicom.dcmread(io.BytesIO(encoded)).file_meta
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.FileMetaInformationGroupLength == len(encoded) - 144 - len(encode_dataset(ds))


def test_element_of_the_data_set_in_the_file_meta_group_is_refused_as_by_pydicom():
    ds = _plain()
    ds.add(DataElement(0x00020013, "SH", "x"))
    with pytest.raises(ValueError, match="File Meta Information Group"):
        encode_part10(ds)


def _read_back(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
def test_sequences_read_from_a_file_nested_and_of_undefined_length_match(charset):
    """Items read from a file keep raw elements; a raw sequence inside them is decoded when an enclosing
    data set was written decoded (pydicom's ambiguous-VR pass), else written as read."""
    inner = Dataset()
    inner.CodeValue = "29857009"
    inner.CodeMeaning = "Thoraxschmerz (ä)"
    outer = Dataset()
    outer.CodeMeaning = "Größe"
    outer.ConceptCodeSequence = [inner]
    outer["ConceptCodeSequence"].is_undefined_length = True
    outer.is_undefined_length_sequence_item = True
    source = _plain()
    source.SpecificCharacterSet = charset
    source.ContentSequence = [outer]
    read = _read_back(source)
    assert_encodes_as_pydicom(read)  # raw throughout, written as read
    fresh = _plain()
    fresh.SpecificCharacterSet = "ISO_IR 192"
    fresh.add(_read_back(source)["ContentSequence"])  # items still raw inside
    assert_encodes_as_pydicom(fresh)
