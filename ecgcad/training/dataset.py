"""Labelled data sets: the manifest CSV, CCTA grade → label mapping, and the cached array store.

A manifest is a CSV with ``path`` (any ECG file ecgcad reads; relative to the manifest's folder),
``patient_id`` (grouping for cross-validation), and one label column per vessel ``rca, lm, lad, lcx``.
Optional columns are carried through to evaluation: :data:`OPTIONAL_COLUMNS`.

Labels are CCTA results. :class:`LabelMapping` turns each cell into an ordinal grade
(0 none · 1 minimal · 2 mild · 3 moderate · 4 severe ≥ 70 % · 5 occlusion) and the grade into 0/1:
positive when ``grade ≥ positive_grade`` (4 by default: severe or complete occlusion). Cells may be words
(``severe``, ``occluded``), CAD-RADS (``CAD-RADS 4A``, ``cadrads 5``), percentages (``70%``), or bare 0/1
(binary) / 0–5 (CAD-RADS). The mapping used is recorded in the store's index.

``ecgcad dataset build MANIFEST OUT`` decodes every file once through the service's readers, gate and
10-s window (:func:`ecgcad.integration.formats.prepare.prepare_file`) into ``OUT``:

- ``signals.npy`` — float32 ``(n, 12, 5000)`` mV (a memory-mapped ``.npy``; rows past ``count`` unused);
- ``labels.npy`` uint8 ``(n, 4)``, ``grades.npy`` float ``(n, 4)`` (NaN: unknown);
- ``index.json`` — ``count``, the records (manifest row, path, patient, labels, optional columns), the
  ``excluded`` rows with their gate / decode reasons, the manifest's SHA-256, the label mapping and the gate
  settings; ``excluded.csv`` lists the non-scorable files for people.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgcad.errors import EcgcadError
from ecgcad.model.preprocess import PreprocessingRecipe, preprocess
from ecgcad.model.risk import VESSELS

if TYPE_CHECKING:
    from ecgcad.config import Settings

logger = logging.getLogger(__name__)

STORE_FORMAT = "ecgcad-dataset"
STORE_VERSION = 1
N_LEADS, N_SAMPLES = 12, 5000
#: Optional manifest columns carried through to evaluation.
OPTIONAL_COLUMNS = ("age", "sex", "acquisition_date", "site", "ecg_normal", "event", "event_time", "split")
GRADE_NAMES = ("none", "minimal", "mild", "moderate", "severe", "occlusion")


class DatasetError(EcgcadError):
    """The manifest or data set is not usable."""


_WORDS = {
    "none": 0, "normal": 0, "no stenosis": 0, "no": 0, "negative": 0,
    "minimal": 1, "mild": 2, "moderate": 3,
    "severe": 4, "significant": 4, "high-grade": 4, "high grade": 4,
    "occlusion": 5, "occluded": 5, "complete occlusion": 5, "total occlusion": 5, "cto": 5,
}  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class LabelMapping:
    """How a label cell becomes an ordinal grade and then 0/1.

    Parameters
    ----------
    positive_grade:
        Grades at or above this are positive (4: severe ≥ 70 % or occlusion).
    numbers:
        ``"auto"`` (bare numbers are binary when every one in the manifest is 0 or 1, else CAD-RADS 0–5),
        ``"binary"`` or ``"cad-rads"``.
    percent_cuts:
        Lower edges (%) of grades 1–4 for percentage cells; 100 % is grade 5.
    words:
        Extra or replacement word → grade entries.
    """

    positive_grade: int = 4
    numbers: str = "auto"
    percent_cuts: tuple[float, float, float, float] = (1.0, 25.0, 50.0, 70.0)
    words: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.positive_grade <= 5:
            raise DatasetError("positive_grade must be between 1 and 5")
        if self.numbers not in ("auto", "binary", "cad-rads"):
            raise DatasetError(f"numbers must be auto, binary or cad-rads, not {self.numbers!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form recorded in the store and in checkpoints."""
        return {
            "positive_grade": self.positive_grade,
            "positive_rule": f"grade ≥ {self.positive_grade} ({GRADE_NAMES[self.positive_grade]}) is positive",
            "grades": list(GRADE_NAMES),
            "numbers": self.numbers,
            "percent_cuts": list(self.percent_cuts),
            "words": {**_WORDS, **dict(self.words)},
        }

    def grade(self, cell: str, binary_numbers: bool) -> float:
        """The ordinal grade of one cell (NaN for an empty cell).

        Raises
        ------
        DatasetError
            A cell that matches no rule.
        """
        text = cell.strip().lower()
        if text in ("", "na", "nan", "unknown"):
            return float("nan")
        words = {**_WORDS, **dict(self.words)}
        if text in words:
            return float(words[text])
        m = re.fullmatch(r"cad[- ]?rads\s*([0-5])\s*([ab])?", text)
        if m:
            return float(min(int(m.group(1)), 5))
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*%", text)
        if m:
            pct = float(m.group(1))
            if pct >= 100:
                return 5.0
            return float(sum(pct >= c for c in self.percent_cuts))
        m = re.fullmatch(r"([0-5])([ab])?", text)
        if m:
            value = int(m.group(1))
            if binary_numbers and not m.group(2):
                return float(5 if value == 1 else 0)
            return float(value)
        raise DatasetError(f"cannot read label {cell!r} (grade word, CAD-RADS, percentage or 0/1)")

    def positive(self, grade: float) -> int:
        """1 when ``grade`` is at or above the positive grade."""
        return int(not np.isnan(grade) and grade >= self.positive_grade)


@dataclasses.dataclass(slots=True)
class ManifestRow:
    """One manifest line: where the ECG is, whose it is, and its labels."""

    row: int
    path: Path
    patient_id: str
    grades: list[float]
    labels: list[int]
    extra: dict[str, str]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: str | os.PathLike[str], mapping: LabelMapping | None = None) -> list[ManifestRow]:
    """Parse a manifest CSV.

    Raises
    ------
    DatasetError
        Missing columns, unreadable labels (naming the row), or unknown label for a vessel.
    """
    mapping = mapping or LabelMapping()
    p = Path(path)
    with p.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        rows = [{k.strip().lower(): (v or "") for k, v in r.items() if k is not None} for r in reader]
    missing = [c for c in ("path", "patient_id", *VESSELS) if c not in fields]
    if missing:
        raise DatasetError(f"manifest {p.name} lacks columns {missing}")
    cells = [r[v].strip() for r in rows for v in VESSELS]
    numbers = [c for c in cells if re.fullmatch(r"[0-9]+", c)]
    binary = mapping.numbers == "binary" or (
        mapping.numbers == "auto" and bool(numbers) and all(c in ("0", "1") for c in numbers)
    )
    out = []
    for k, r in enumerate(rows, start=2):
        try:
            grades = [mapping.grade(r[v], binary) for v in VESSELS]
        except DatasetError as exc:
            raise DatasetError(f"manifest {p.name} line {k}: {exc}") from exc
        file = Path(r["path"].strip())
        if not file.is_absolute():
            file = p.parent / file
        extra = {c: r[c].strip() for c in OPTIONAL_COLUMNS if c in r and r[c].strip()}
        out.append(
            ManifestRow(
                row=k,
                path=file,
                patient_id=r["patient_id"].strip(),
                grades=grades,
                labels=[mapping.positive(g) for g in grades],
                extra=extra,
            )
        )
    return out


class DatasetStore:
    """A built data set (see the module docstring); open with :meth:`open`."""

    def __init__(self, root: Path, index: dict[str, Any]) -> None:
        self.root = root
        self.index = index
        self.count = int(index["count"])
        self.records: list[dict[str, Any]] = index["records"]
        self.excluded: list[dict[str, Any]] = index.get("excluded", [])

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> DatasetStore:
        """Open a store written by :func:`build_dataset` or :func:`write_store`.

        Raises
        ------
        DatasetError
            No store there, or an unknown format.
        """
        r = Path(root)
        try:
            index = json.loads((r / "index.json").read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{r} is not a data set store: {exc}") from exc
        if index.get("format") != STORE_FORMAT or index.get("format_version") != STORE_VERSION:
            raise DatasetError(f"{r}: unknown data set format")
        return cls(r, index)

    @property
    def signals(self) -> np.ndarray:
        """float32 ``(count, 12, 5000)`` mV, memory-mapped."""
        return np.load(self.root / "signals.npy", mmap_mode="r")[: self.count]

    @property
    def labels(self) -> np.ndarray:
        """uint8 ``(count, 4)``."""
        return np.load(self.root / "labels.npy")[: self.count]

    @property
    def grades(self) -> np.ndarray:
        """float ``(count, 4)`` ordinal CCTA grades (NaN: unknown)."""
        return np.load(self.root / "grades.npy")[: self.count]

    @property
    def patient_ids(self) -> np.ndarray:
        """Patient identifier per row."""
        return np.array([r["patient_id"] for r in self.records], dtype=object)

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the manifest (or of the synthetic recipe) the store was built from."""
        return str(self.index.get("manifest_sha256", ""))

    def column(self, name: str) -> list[str | None]:
        """An optional manifest column per row (``None`` where absent)."""
        return [r.get("extra", {}).get(name) for r in self.records]

    def preprocessed(self, recipe: PreprocessingRecipe, chunk: int = 256) -> np.ndarray:
        """Model input for every row under ``recipe``, cached next to the signals (memory-mapped)."""
        key = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        path = self.root / f"preprocessed-{key}.npy"
        if path.exists():
            cached = np.load(path, mmap_mode="r")
            if cached.shape[0] == self.count:
                return cached
        tmp = path.with_name(path.name + ".tmp.npy")
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(self.count, N_LEADS, N_SAMPLES)
        )
        signals = self.signals
        for start in range(0, self.count, chunk):
            out[start : start + chunk] = preprocess(np.asarray(signals[start : start + chunk]), recipe)
        out.flush()
        del out
        os.replace(tmp, path)
        return np.load(path, mmap_mode="r")


def write_store(
    out: str | os.PathLike[str],
    capacity: int,
    items: Iterable[tuple[np.ndarray | None, dict[str, Any]]],
    *,
    manifest_sha256: str,
    provenance: dict[str, Any],
) -> DatasetStore:
    """Write a store from ``(signal or None, record)`` pairs; ``None`` → the record goes to ``excluded``.

    Each record holds ``row, path, patient_id, labels (4 ints), grades (4 floats or None), extra, reasons``.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    signals = np.lib.format.open_memmap(
        root / "signals.npy", mode="w+", dtype=np.float32, shape=(max(capacity, 1), N_LEADS, N_SAMPLES)
    )
    labels = np.zeros((max(capacity, 1), len(VESSELS)), np.uint8)
    grades = np.full((max(capacity, 1), len(VESSELS)), np.nan)
    records: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for sig, record in items:
        if sig is None:
            excluded.append(record)
            continue
        n = len(records)
        signals[n] = np.nan_to_num(np.asarray(sig, np.float32), nan=0.0)
        labels[n] = record["labels"]
        grades[n] = [np.nan if g is None else g for g in record["grades"]]
        records.append(record)
    signals.flush()
    del signals
    np.save(root / "labels.npy", labels)
    np.save(root / "grades.npy", grades)
    for stale in root.glob("preprocessed-*.npy"):
        stale.unlink()
    index = {
        "format": STORE_FORMAT,
        "format_version": STORE_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "count": len(records),
        "manifest_sha256": manifest_sha256,
        **provenance,
        "records": records,
        "excluded": excluded,
    }
    (root / "index.json").write_text(json.dumps(index, indent=1, default=str))
    with (root / "excluded.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "path", "patient_id", "reasons"])
        for e in excluded:
            w.writerow(
                [
                    e["row"],
                    e["path"],
                    e["patient_id"],
                    "; ".join(f"{r['code']}: {r['text']}" for r in e["reasons"]),
                ]
            )
    return DatasetStore(root, index)


def build_dataset(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: Settings,
    mapping: LabelMapping | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetStore:
    """Decode, gate and window every manifest file (as the service does) into a store at ``out``.

    Non-scorable files are kept in ``excluded`` with their reasons, never silently dropped.
    """
    from ecgcad.integration.formats.prepare import prepare_file

    mapping = mapping or LabelMapping()
    rows = read_manifest(manifest, mapping)

    def items() -> Iterable[tuple[np.ndarray | None, dict[str, Any]]]:
        for k, row in enumerate(rows):
            sig, reasons = prepare_file(row.path, settings.gate)
            record = {
                "row": row.row,
                "path": str(row.path),
                "patient_id": row.patient_id,
                "labels": row.labels,
                "grades": [None if np.isnan(g) else g for g in row.grades],
                "extra": row.extra,
                "reasons": reasons,
            }
            if progress:
                progress(k + 1, len(rows))
            yield sig, record

    store = write_store(
        out,
        len(rows),
        items(),
        manifest_sha256=file_sha256(manifest),
        provenance={
            "source": str(Path(manifest).name),
            "label_mapping": mapping.to_dict(),
            "gate": settings.gate.model_dump(),
        },
    )
    logger.info("data set: %d scorable, %d excluded", store.count, len(store.excluded))
    return store


def build_synthetic_store(
    out: str | os.PathLike[str],
    n: int,
    seed: int,
    prevalence: tuple[float, ...] | None = None,
    validation_fraction: float | None = None,
) -> DatasetStore:
    """A store of synthetic ECGs (:func:`ecgcad.model.synthetic.generate`) with made-up covariates.

    Each positive vessel gets grade 4 or 5, each negative 0–3; age, sex and site are drawn from the seed,
    so that every evaluation section (grades, subgroups) has something to show. With
    ``validation_fraction`` the last rows get ``split = validation`` and the rest ``split = train`` (for
    ``train --split fixed`` with the test set held out elsewhere).
    """
    from ecgcad.model.synthetic import DEFAULT_PREVALENCE, generate

    prev = tuple(prevalence) if prevalence is not None else DEFAULT_PREVALENCE
    data = generate(n, seed, prevalence=prev)
    rng = np.random.default_rng(seed + 1)
    grades = np.where(
        data.labels == 1, rng.integers(4, 6, data.labels.shape), rng.integers(0, 4, data.labels.shape)
    )
    ages = rng.integers(35, 85, n)
    sexes = rng.choice(["F", "M"], n)
    sites = rng.choice(["A", "B"], n)
    normal = rng.random(n) < 0.4
    dates = [str(dt.date(2020, 1, 1) + dt.timedelta(days=int(d))) for d in rng.integers(0, 1460, n)]

    n_validation = int(round((validation_fraction or 0.0) * n))

    def split_of(k: int) -> dict[str, str]:
        if validation_fraction is None:
            return {}
        return {"split": "validation" if k >= n - n_validation else "train"}

    def items() -> Iterable[tuple[np.ndarray | None, dict[str, Any]]]:
        for k in range(n):
            yield (
                data.signals[k],
                {
                    "row": k,
                    "path": f"synthetic:{seed}:{k}",
                    "patient_id": f"SYN{seed}-{k:05d}",
                    "labels": [int(x) for x in data.labels[k]],
                    "grades": [float(g) for g in grades[k]],
                    "extra": {
                        "age": str(int(ages[k])),
                        "sex": str(sexes[k]),
                        "site": str(sites[k]),
                        "acquisition_date": dates[k],
                        "ecg_normal": "1" if normal[k] else "0",
                        **split_of(k),
                    },
                    "reasons": [],
                },
            )

    recipe = {"generator": "ecgcad.model.synthetic.generate", "n": n, "seed": seed, "prevalence": list(prev)}
    return write_store(
        out,
        n,
        items(),
        manifest_sha256=hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(),
        provenance={"source": "synthetic", "synthetic": recipe, "label_mapping": LabelMapping().to_dict()},
    )
