"""Manifests: CCTA grades map to labels by a recorded rule; files go through the service's readers and gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecgcad.config import load_settings
from ecgcad.model.synthetic import generate
from ecgcad.testing.ecg_writers import build_dicom_ecg, write_muse_xml
from ecgcad.training.dataset import DatasetError, DatasetStore, LabelMapping, build_dataset, read_manifest


@pytest.mark.parametrize(
    ("cell", "grade"),
    [
        ("none", 0), ("Minimal", 1), ("mild", 2), ("moderate", 3), ("severe", 4), ("occluded", 5),
        ("CAD-RADS 0", 0), ("cad-rads 3", 3), ("CAD-RADS 4A", 4), ("cadrads 4b", 4), ("CAD-RADS 5", 5),
        ("30%", 2), ("69 %", 3), ("70%", 4), ("100%", 5), ("4A", 4),
    ],
)  # fmt: skip
def test_grade_words_cad_rads_and_percentages_map_to_ordinal_grades(cell: str, grade: int) -> None:
    assert LabelMapping().grade(cell, binary_numbers=False) == grade


def test_severe_or_occlusion_is_positive_and_the_rule_is_configurable() -> None:
    default = LabelMapping()
    assert [default.positive(g) for g in range(6)] == [0, 0, 0, 0, 1, 1]
    only_occlusion = LabelMapping(positive_grade=5)
    assert [only_occlusion.positive(g) for g in range(6)] == [0, 0, 0, 0, 0, 1]
    assert "grade ≥ 5" in only_occlusion.to_dict()["positive_rule"]


def test_bare_zero_one_columns_are_binary_and_other_numbers_cad_rads(tmp_path: Path) -> None:
    binary = tmp_path / "b.csv"
    binary.write_text("path,patient_id,rca,lm,lad,lcx\na.dcm,P1,1,0,0,1\n")
    assert read_manifest(binary)[0].labels == [1, 0, 0, 1]
    cadrads = tmp_path / "c.csv"
    cadrads.write_text("path,patient_id,rca,lm,lad,lcx\na.dcm,P1,1,0,4,5\nb.dcm,P2,3,2,severe,none\n")
    rows = read_manifest(cadrads)
    assert rows[0].labels == [0, 0, 1, 1] and rows[1].labels == [0, 0, 1, 0]
    assert rows[0].grades == [1, 0, 4, 5]


def test_unreadable_label_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,patient_id,rca,lm,lad,lcx\na.dcm,P1,severe,none,none,maybe\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_manifest(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,rca,lm,lad,lcx\n")
    with pytest.raises(DatasetError, match="patient_id"):
        read_manifest(missing)


def test_dataset_build_uses_the_service_readers_and_lists_non_scorable_files(tmp_path: Path) -> None:
    data = generate(3, seed=77)
    (tmp_path / "ecgs").mkdir()
    (tmp_path / "ecgs" / "a.dcm").write_bytes(build_dicom_ecg(data.signals[0], 500.0))
    (tmp_path / "ecgs" / "b.xml").write_bytes(write_muse_xml(data.signals[1], 500.0))
    flat = np.zeros((12, 5000), np.float32)
    (tmp_path / "ecgs" / "flat.dcm").write_bytes(build_dicom_ecg(flat, 500.0))
    (tmp_path / "ecgs" / "junk.dcm").write_bytes(b"not an ECG")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,patient_id,rca,lm,lad,lcx,age,sex,site\n"
        "ecgs/a.dcm,P1,severe,none,mild,CAD-RADS 5,61,M,A\n"
        "ecgs/b.xml,P2,none,none,none,none,55,F,B\n"
        "ecgs/flat.dcm,P3,none,none,none,none,,,\n"
        "ecgs/junk.dcm,P4,none,none,none,none,,,\n"
    )
    store = build_dataset(manifest, tmp_path / "store", load_settings(None))
    assert store.count == 2
    assert store.labels.tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]
    assert np.isclose(np.asarray(store.signals[0]), data.signals[0], atol=0.01).mean() > 0.99
    excluded = {Path(e["path"]).name: e["reasons"] for e in store.excluded}
    assert set(excluded) == {"flat.dcm", "junk.dcm"}
    assert all(excluded[name] for name in excluded)  # every exclusion says why
    assert excluded["junk.dcm"][0]["code"] == "decode-error"
    again = DatasetStore.open(tmp_path / "store")
    assert again.column("site") == ["A", "B"]
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert index["label_mapping"]["positive_grade"] == 4
    assert len(index["manifest_sha256"]) == 64
    assert "junk.dcm" in (tmp_path / "store" / "excluded.csv").read_text()
