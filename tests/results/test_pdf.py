"""The report PDF renders (pdftoppm) to a non-blank page; its Encapsulated PDF wrapper validates."""

from __future__ import annotations

import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pydicom
import pytest

from ecgcad.errors import BuildError
from ecgcad.integration.reports.pdf import ENCAPSULATED_PDF_STORAGE, build_encapsulated_pdf, render_report_pdf
from tests.results.conftest import make_input, not_evaluated_input, tool


def _render_png(pdf: bytes, tmp_path: Path) -> np.ndarray:
    src = tmp_path / "report.pdf"
    src.write_bytes(pdf)
    subprocess.run(
        [tool("pdftoppm"), "-r", "60", "-png", "-singlefile", str(src), str(tmp_path / "page")],
        check=True,
        timeout=60,
    )
    return matplotlib.image.imread(tmp_path / "page.png")


@pytest.mark.parametrize("scored", [True, False])
def test_report_pdf_renders_to_a_non_blank_page(ecg_dataset, ecg_bytes, tmp_path, scored):
    inp = make_input(ecg_dataset, ecg_bytes) if scored else not_evaluated_input(ecg_dataset, ecg_bytes)
    pdf = render_report_pdf(inp)
    assert pdf.startswith(b"%PDF-") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") <= 1
    image = _render_png(pdf, tmp_path)
    gray = image[..., :3].mean(axis=2)
    assert gray.shape[1] > gray.shape[0]  # landscape
    assert gray.std() > 0.05  # not a blank page
    assert (gray < 0.3).mean() > 0.005  # dark ink: tracing and text
    red = (image[..., 0] > 0.7) & (image[..., 1] < 0.5)
    assert red.mean() > 0.0005  # ECG paper grid / flagged bars / disclaimer


def test_report_pdf_is_deterministic(ecg_dataset, ecg_bytes):
    inp = make_input(ecg_dataset, ecg_bytes)
    assert render_report_pdf(inp) == render_report_pdf(inp)


def test_report_pdf_without_signal_still_renders(tmp_path):
    pdf = render_report_pdf(make_input(None, None, signal=None, median_beats=None, explanations=None))
    assert _render_png(pdf, tmp_path)[..., :3].mean(axis=2).std() > 0.02


@pytest.fixture(scope="module")
def encapsulated(ecg_dataset, ecg_bytes, tmp_path_factory) -> tuple[Path, bytes]:
    inp = make_input(ecg_dataset, ecg_bytes)
    pdf = render_report_pdf(inp)
    path = tmp_path_factory.mktemp("pdf") / "pdf.dcm"
    build_encapsulated_pdf(inp, pdf).save_as(path, enforce_file_format=True)
    return path, pdf


def test_encapsulated_pdf_is_in_the_ecg_study_with_required_attributes(encapsulated, ecg_dataset):
    path, pdf = encapsulated
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE
    assert (ds.Modality, ds.ConversionType, ds.BurnedInAnnotation) == ("DOC", "WSD", "YES")
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    for keyword in ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        assert ds[keyword].value == ecg_dataset[keyword].value
    assert ds.StudyInstanceUID == ecg_dataset.StudyInstanceUID
    assert ds.AccessionNumber == ecg_dataset.AccessionNumber
    assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength] == pdf
    again = build_encapsulated_pdf(make_input(ecg_dataset, None), pdf)
    assert again.SOPInstanceUID == ds.SOPInstanceUID


def test_dciodvfy_reports_no_errors_on_the_encapsulated_pdf(encapsulated):
    out = subprocess.run([tool("dciodvfy"), str(encapsulated[0])], capture_output=True, text=True, timeout=60)
    assert [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")] == []


def test_encapsulated_pdf_refuses_non_pdf_bytes(ecg_dataset, ecg_bytes):
    with pytest.raises(BuildError):
        build_encapsulated_pdf(make_input(ecg_dataset, ecg_bytes), b"not a pdf")
