"""Backfill and PACS catch-up: bring ECGs that were never pushed to us into the normal pipeline.

* :func:`backfill_folder` walks an archive folder in a fixed order and hands each file to
  :meth:`~ecgcad.pipeline.ingest.Ingestor.ingest_file` (which queues a ``decode`` job). A checkpoint in
  ``KvState`` (``backfill:folder:<path>``) records the last file done, so a re-run starts after it; files
  already stored are recognised by their SHA-256 anyway.
* :func:`backfill_pacs` asks a PACS (``[[pacs_sources]]``) with C-FIND — studies with Modality ``ECG`` whose
  StudyDate is on or after ``since``, their ECG series, their instances of the ECG waveform SOP classes —
  and retrieves the instances we have not stored: C-MOVE to our own SCP (the listener stores them), or C-GET
  (stored here with :meth:`~ecgcad.pipeline.ingest.Ingestor.ingest_dicom`, kind ``pacs``).
* ``pacs_catch_up`` jobs (scheduled per source with ``catch_up = true``) run :func:`backfill_pacs` from the
  day before the last successful run (marker ``pacs:<name>:last_run``); the first run looks back one day.

Back-pressure (queue too deep, disk low) pauses a backfill instead of failing it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydicom import Dataset
from sqlalchemy import select

from ecgcad.db.models import EcgRecord, KvState, SourceObject, utcnow
from ecgcad.errors import BackPressureError, DecodeError, DeliveryError
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.jobs.worker import Handler

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    from ecgcad.config import PacsSourceSettings
    from ecgcad.context import AppContext

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]  # (done, total or None)

#: The ECG waveform storage SOP classes we accept (PS3.4 Annex B waveform storage).
ECG_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.9.1.1",
    "1.2.840.10008.5.1.4.1.1.9.1.2",
    "1.2.840.10008.5.1.4.1.1.9.1.4",
)
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CHECKPOINT_EVERY = 100
BACKPRESSURE_WAIT_S = 2.0


class PacsError(DeliveryError):
    """The PACS refused or failed a query or retrieve."""


@dataclasses.dataclass
class BackfillReport:
    """What a backfill did."""

    seen: int = 0
    queued: int = 0
    skipped: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters."""
        return dataclasses.asdict(self)


# -- markers -----------------------------------------------------------------------------------------------
def get_marker(ctx: AppContext, key: str) -> dict[str, Any] | None:
    """The ``KvState`` value under ``key``."""
    with ctx.db.session() as session:
        row = session.get(KvState, key)
        return dict(row.value) if row is not None else None


def set_marker(ctx: AppContext, key: str, value: dict[str, Any]) -> None:
    """Store ``value`` under ``key`` in ``KvState``."""
    with ctx.db.session() as session:
        row = session.get(KvState, key)
        if row is None:
            session.add(KvState(key=key, value=value))
        else:
            row.value = value


def _with_backpressure(call: Callable[[], _T]) -> _T:
    while True:
        try:
            return call()
        except BackPressureError as exc:
            logger.info("backfill paused: %s", exc)
            time.sleep(BACKPRESSURE_WAIT_S)


# -- folders -----------------------------------------------------------------------------------------------
def walk_sorted(root: Path) -> Iterator[Path]:
    """Files under ``root`` in the order of their path components (names sorted at each level)."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        logger.warning("cannot list %s: %s", root, exc)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from walk_sorted(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def backfill_folder(
    ctx: AppContext,
    path: str | os.PathLike[str],
    *,
    since: dt.date | None = None,
    progress: Progress | None = None,
    limit: int | None = None,
) -> BackfillReport:
    """Queue every file under ``path`` for decoding and scoring, resuming after the last checkpoint.

    Parameters
    ----------
    ctx:
        The application context.
    path:
        The archive folder.
    since:
        Only files modified on or after this date.
    progress:
        Called as ``progress(done, None)`` after each file.
    limit:
        Stop after this many files (tests, trial runs); the checkpoint still records them.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    key = f"backfill:folder:{root}"[:128]
    marker = get_marker(ctx, key) or {}
    done_through = tuple(marker.get("done_through") or ())
    since_ts = dt.datetime.combine(since, dt.time(), dt.UTC).timestamp() if since else None
    report = BackfillReport()
    last: tuple[str, ...] = done_through

    def save() -> None:
        set_marker(ctx, key, {"done_through": list(last), "updated_at": utcnow().isoformat()})

    for file in walk_sorted(root):
        parts = file.relative_to(root).parts
        if done_through and parts <= done_through:
            continue
        if limit is not None and report.seen >= limit:
            break
        report.seen += 1
        try:
            if since_ts is not None and file.stat().st_mtime < since_ts:
                report.skipped += 1
            else:
                ingest = functools.partial(
                    ctx.ingestor.ingest_file, file.read_bytes(), filename=file.name, kind="file"
                )
                result = _with_backpressure(ingest)
                if result.duplicate:
                    report.skipped += 1
                else:
                    report.queued += 1
        except OSError as exc:
            logger.warning("backfill: cannot read a file (%s)", type(exc).__name__)
            report.failed += 1
        last = parts
        if report.seen % CHECKPOINT_EVERY == 0:
            save()
        if progress is not None:
            progress(report.seen, None)
    save()
    logger.info("folder backfill: %s", report.as_dict())
    return report


# -- PACS --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class PacsInstance:
    """One ECG instance found on a PACS."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


class PacsClient:
    """C-FIND / C-MOVE / C-GET against one ``[[pacs_sources]]`` entry (Study Root information model).

    Parameters
    ----------
    source:
        The PACS settings.
    calling_ae_title:
        Our AE title.
    """

    def __init__(self, source: PacsSourceSettings, calling_ae_title: str) -> None:
        self.source = source
        self.calling_ae_title = calling_ae_title

    def _ae(self, *, get: bool = False) -> ApplicationEntity:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.source.timeout_s
        ae.add_requested_context(STUDY_ROOT_FIND)
        if get:
            ae.add_requested_context(STUDY_ROOT_GET)
            for uid in ECG_SOP_CLASSES:
                ae.add_requested_context(uid)
        else:
            ae.add_requested_context(STUDY_ROOT_MOVE)
        return ae

    def _associate(self, ae: ApplicationEntity, **kwargs: Any) -> Association:  # noqa: ANN401 - AE.associate's keyword arguments
        assoc = ae.associate(self.source.host, self.source.port, ae_title=self.source.ae_title, **kwargs)
        if not assoc.is_established:
            raise PacsError(f"PACS {self.source.name} refused the association")
        return assoc

    def _find(self, assoc: Association, query: Dataset) -> list[Dataset]:

        out: list[Dataset] = []
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"PACS {self.source.name}: C-FIND timed out or was aborted")
            if code in (0xFF00, 0xFF01) and identifier is not None:
                out.append(identifier)
            elif code not in (0x0000, 0xFF00, 0xFF01):
                raise PacsError(f"PACS {self.source.name}: C-FIND status 0x{code:04X}")
        return out

    def find_instances(self, since: dt.date | None = None) -> list[PacsInstance]:
        """ECG instances of studies on or after ``since`` (Modality ECG; ECG waveform SOP classes)."""
        ae = self._ae()
        assoc = self._associate(ae)
        found: list[PacsInstance] = []
        try:
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = ""
            q.ModalitiesInStudy = "ECG"
            q.StudyDate = f"{since:%Y%m%d}-" if since else ""
            for study in self._find(assoc, q):
                s = Dataset()
                s.QueryRetrieveLevel = "SERIES"
                s.StudyInstanceUID = study.StudyInstanceUID
                s.SeriesInstanceUID = ""
                s.Modality = "ECG"
                for series in self._find(assoc, s):
                    i = Dataset()
                    i.QueryRetrieveLevel = "IMAGE"
                    i.StudyInstanceUID = study.StudyInstanceUID
                    i.SeriesInstanceUID = series.SeriesInstanceUID
                    i.SOPInstanceUID = ""
                    i.SOPClassUID = ""
                    for inst in self._find(assoc, i):
                        sop_class = str(inst.get("SOPClassUID", "") or "")
                        if sop_class and sop_class not in ECG_SOP_CLASSES:
                            continue
                        found.append(
                            PacsInstance(
                                str(study.StudyInstanceUID),
                                str(series.SeriesInstanceUID),
                                str(inst.SOPInstanceUID),
                                sop_class,
                            )
                        )
        finally:
            assoc.release()
        return found

    @staticmethod
    def _identifier(instances: list[PacsInstance]) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = instances[0].study_instance_uid
        ds.SeriesInstanceUID = instances[0].series_instance_uid
        ds.SOPInstanceUID = [i.sop_instance_uid for i in instances]
        return ds

    def move(self, instances: list[PacsInstance], destination: str) -> int:
        """C-MOVE ``instances`` (one series) to the AE ``destination``; return how many were sent."""

        assoc = self._associate(self._ae())
        completed = 0
        try:
            for status, _ in assoc.send_c_move(self._identifier(instances), destination, STUDY_ROOT_MOVE):
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsError(f"PACS {self.source.name}: C-MOVE timed out or was aborted")
                if code in (0x0000, 0xB000):
                    completed = int(getattr(status, "NumberOfCompletedSuboperations", completed) or completed)
                    if code == 0xB000:
                        logger.warning("C-MOVE from %s completed with failures", self.source.name)
                elif code not in (0xFF00,):
                    raise PacsError(f"PACS {self.source.name}: C-MOVE status 0x{code:04X}")
        finally:
            assoc.release()
        return completed

    def get(self, instances: list[PacsInstance], on_store: Callable[[Event], int]) -> int:
        """C-GET ``instances`` (one series); ``on_store(event)`` stores each and returns a DIMSE status."""
        from pynetdicom import build_role, evt

        ae = self._ae(get=True)
        roles = [build_role(uid, scp_role=True) for uid in ECG_SOP_CLASSES]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        completed = 0
        try:
            for status, _ in assoc.send_c_get(self._identifier(instances), STUDY_ROOT_GET):
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsError(f"PACS {self.source.name}: C-GET timed out or was aborted")
                if code in (0x0000, 0xB000):
                    completed = int(getattr(status, "NumberOfCompletedSuboperations", completed) or completed)
                elif code != 0xFF00:
                    raise PacsError(f"PACS {self.source.name}: C-GET status 0x{code:04X}")
        finally:
            assoc.release()
        return completed


def _unseen(ctx: AppContext, instances: list[PacsInstance]) -> list[PacsInstance]:
    uids = [i.sop_instance_uid for i in instances]
    seen: set[str | None] = set()
    with ctx.db.session() as session:
        for start in range(0, len(uids), 500):
            chunk = uids[start : start + 500]
            seen.update(
                session.execute(
                    select(SourceObject.sop_instance_uid).where(SourceObject.sop_instance_uid.in_(chunk))
                )
                .scalars()
                .all()
            )
            seen.update(
                session.execute(
                    select(EcgRecord.sop_instance_uid).where(EcgRecord.sop_instance_uid.in_(chunk))
                )
                .scalars()
                .all()
            )
    return [i for i in instances if i.sop_instance_uid not in seen]


def _store_handler(ctx: AppContext, report: BackfillReport) -> Callable[[Event], int]:
    """A C-STORE handler (C-GET sub-operations): decode, then ingest as kind ``pacs``."""
    from ecgcad.integration.formats.readers import decode

    def on_store(event: Event) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
            request = cast("C_STORE", event.request)
            sop_instance_uid = str(request.AffectedSOPInstanceUID or "") or None
            ecg, error = None, None
            try:
                ecg = decode(data)
            except DecodeError as exc:
                error = str(exc)[:500] or type(exc).__name__
            result = _with_backpressure(
                lambda: ctx.ingestor.ingest_dicom(
                    data,
                    sop_class_uid=str(request.AffectedSOPClassUID or "") or None,
                    sop_instance_uid=sop_instance_uid,
                    ecg=ecg,
                    decode_error=error,
                    calling_ae=event.assoc.requestor.ae_title.strip()[:16] if event.assoc else None,
                    kind="pacs",
                )
            )
            if not result.duplicate:
                report.queued += 1
            return 0x0000
        except Exception:  # noqa: BLE001 - the DIMSE boundary: answer a failure status, keep the association
            logger.exception("C-GET store failed")
            report.failed += 1
            return 0xA700

    return on_store


def backfill_pacs(
    ctx: AppContext,
    name: str,
    *,
    since: dt.date | None = None,
    progress: Progress | None = None,
) -> BackfillReport:
    """Retrieve the ECG instances of PACS ``name`` (studies on or after ``since``) that we have not stored.

    Raises
    ------
    PacsError
        The PACS refused the association or a query / retrieve failed.
    """
    settings = ctx.settings
    source = settings.pacs_source(name)
    client = PacsClient(source, settings.dicom.ae_title)
    found = client.find_instances(since)
    todo = _unseen(ctx, found)
    report = BackfillReport(seen=len(found), skipped=len(found) - len(todo))
    series: dict[tuple[str, str], list[PacsInstance]] = {}
    for inst in todo:
        series.setdefault((inst.study_instance_uid, inst.series_instance_uid), []).append(inst)
    done = 0
    destination = source.move_destination or settings.dicom.ae_title
    for group in series.values():
        if source.retrieve == "get":
            client.get(group, _store_handler(ctx, report))
        else:
            report.queued += client.move(group, destination)
        done += len(group)
        if progress is not None:
            progress(done, len(todo))
    logger.info("PACS %s backfill since %s: %s", name, since, report.as_dict())
    return report


def pacs_catch_up(ctx: AppContext, name: str, *, now: dt.datetime | None = None) -> BackfillReport:
    """One catch-up run for PACS ``name``: since the day before the last successful run."""
    now = now or utcnow()
    key = f"pacs:{name}:last_run"
    marker = get_marker(ctx, key)
    last = dt.datetime.fromisoformat(marker["at"]) if marker else now - dt.timedelta(days=1)
    since = (last - dt.timedelta(days=1)).date()
    report = backfill_pacs(ctx, name, since=since)
    set_marker(ctx, key, {"at": now.isoformat(), "since": since.isoformat(), **report.as_dict()})
    return report


def make_pacs_catch_up_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``pacs_catch_up`` jobs (payload ``{"source": name}``)."""

    def handle(jobs: list[ClaimedJob]) -> dict[int, BaseException] | None:
        failures: dict[int, BaseException] = {}
        for job in jobs:
            try:
                pacs_catch_up(ctx, str(job.payload["source"]))
            except Exception as exc:  # noqa: BLE001 - retried with backoff by the queue
                logger.warning("PACS catch-up %s failed: %s", job.payload.get("source"), exc)
                failures[job.id] = exc
        return failures or None

    return handle


__all__ = [
    "BackfillReport",
    "PacsClient",
    "PacsError",
    "PacsInstance",
    "backfill_folder",
    "backfill_pacs",
    "make_pacs_catch_up_handler",
    "pacs_catch_up",
    "walk_sorted",
]
