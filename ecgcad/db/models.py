"""SQLAlchemy 2 typed models: the whole persistent state of ecgcad.

Tables: ``source_objects`` (raw received bytes, content-addressed on disk), ``orders`` (HL7 orders and
ADT updates we may quote later), ``ecgs`` (identifiers copied from the source, decode and gate status),
``jobs`` (the embedded queue), ``model_versions``, ``results`` (unique per ECG × model version × result
version), ``deliveries`` (unique per result × destination × object kind), ``audit_events`` (append-only,
hash-chained), ``api_tokens`` and ``kv_state`` (scheduler and backfill markers).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """Timezone-aware current UTC time (the only clock the database sees)."""
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[dt.datetime | None], object] | None:
        """On SQLite, :meth:`process_bind_param` and SQLite's own text format in one step (five timestamps
        go into the rows of every message received); the same text, tested against the two-step one."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        utc = dt.UTC

        def process(value: dt.datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is not None:
                value = value.astimezone(utc)
            return _SQLITE_FORMAT % (
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )

        return process

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


#: SQLAlchemy's default text for a SQLite ``DATETIME`` (``sqlalchemy.dialects.sqlite.DATETIME``).
_SQLITE_FORMAT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"

TZ = UtcDateTime()


def _partial_index(table: str, column: str) -> Index:
    """``ix_<table>_<column>`` over the rows where ``column`` is set (migration 0003): rows without a
    value cost no index page when they are inserted, and ``=`` lookups still use it."""
    where = text(f'"{column}" IS NOT NULL')
    return Index(f"ix_{table}_{column}", column, sqlite_where=where, postgresql_where=where)


class Base(DeclarativeBase):
    """Declarative base with the constraint naming convention Alembic batch mode needs."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: TZ, dict[str, Any]: JSON, list[Any]: JSON}


class SourceObject(Base):
    """A received object (DICOM instance, HL7 message, file) exactly as it arrived."""

    __tablename__ = "source_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    #: Path in the object store, or :data:`IN_DATABASE` when the bytes are in :attr:`content`.
    storage_path: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(16))  # dicom | hl7 | file | pacs
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    object_version: Mapped[int] = mapped_column(Integer, default=1)
    message_control_id: Mapped[str | None] = mapped_column(String(199))
    message_type: Mapped[str | None] = mapped_column(String(32))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column()
    #: The bytes of a small object kept in the database (HL7 messages); not loaded unless asked for.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)

    __table_args__ = (
        _partial_index("source_objects", "sop_instance_uid"),
        _partial_index("source_objects", "message_control_id"),
    )


#: :attr:`SourceObject.storage_path` of an object whose bytes are in :attr:`SourceObject.content`.
IN_DATABASE = "db:source_objects.content"


class Order(Base):
    """An order (ORM^O01 / OMG^O19) or patient update (ADT) that a later ECG result can quote."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_object_id: Mapped[int] = mapped_column(ForeignKey("source_objects.id"))
    message_type: Mapped[str] = mapped_column(String(32))
    order_control: Mapped[str | None] = mapped_column(String(8))
    placer_order_number: Mapped[str | None] = mapped_column(String(199), index=True)
    filler_order_number: Mapped[str | None] = mapped_column(String(199), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    visit_number: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class EcgRecord(Base):
    """One ECG: identifiers copied from its source, decode and gate outcome, and where it stands."""

    __tablename__ = "ecgs"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_object_id: Mapped[int] = mapped_column(ForeignKey("source_objects.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    format: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(16))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_age: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    issuer_of_accession_number: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    placer_order_number: Mapped[str | None] = mapped_column(String(199))
    filler_order_number: Mapped[str | None] = mapped_column(String(199))
    acquisition_datetime: Mapped[dt.datetime | None] = mapped_column()
    device: Mapped[str | None] = mapped_column(String(128))
    sampling_rate: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    leads: Mapped[list[Any] | None] = mapped_column(JSON)
    derived_leads: Mapped[list[Any] | None] = mapped_column(JSON)
    notes: Mapped[list[Any] | None] = mapped_column(JSON)
    identifiers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    decode_status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | decoded | failed
    decode_reason: Mapped[str | None] = mapped_column(Text)
    gate_status: Mapped[str | None] = mapped_column(String(16))  # scorable | not_evaluated
    gate_reasons: Mapped[list[Any] | None] = mapped_column(JSON)
    # received → queued → scored | not_evaluated | failed
    state: Mapped[str] = mapped_column(String(16), default="received", index=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)

    source_object: Mapped[SourceObject] = relationship()
    results: Mapped[list[Result]] = relationship(back_populates="ecg", order_by="Result.id")

    #: Columns copied unchanged from the source object's identifiers (``EcgIdentifiers`` field names).
    IDENTIFIER_COLUMNS: ClassVar[tuple[str, ...]] = (
        "patient_id",
        "issuer_of_patient_id",
        "patient_name",
        "patient_birth_date",
        "patient_sex",
        "patient_age",
        "accession_number",
        "issuer_of_accession_number",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "sop_class_uid",
        "placer_order_number",
        "filler_order_number",
        "acquisition_datetime",
        "device",
    )


class Job(Base):
    """A unit of work in the embedded queue. Payloads hold ids, never waveforms."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "state", "kind", "run_after"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done | failed
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    run_after: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class ModelVersion(Base):
    """A checkpoint the service has scored with: identity, metadata and lifecycle role."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128), unique=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    checkpoint_path: Mapped[str | None] = mapped_column(String(1024))
    demonstration: Mapped[bool] = mapped_column(Boolean, default=False)
    role: Mapped[str] = mapped_column(String(16), default="active")  # active | shadow | retired
    model_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Result(Base):
    """A score (or a "not evaluated" verdict) of one ECG by one model version."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("ecg_id", "model_version_id", "result_version", name="uq_results_ecg_model"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ecg_id: Mapped[int] = mapped_column(ForeignKey("ecgs.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    result_version: Mapped[int] = mapped_column(Integer, default=1)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    scorable: Mapped[bool] = mapped_column(Boolean)
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason_text: Mapped[str | None] = mapped_column(Text)
    p_rca: Mapped[float | None] = mapped_column(Float)
    p_lm: Mapped[float | None] = mapped_column(Float)
    p_lad: Mapped[float | None] = mapped_column(Float)
    p_lcx: Mapped[float | None] = mapped_column(Float)
    flag_rca: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_lm: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_lad: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_lcx: Mapped[bool] = mapped_column(Boolean, default=False)
    any_flagged: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    risk_bands: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    demonstration: Mapped[bool] = mapped_column(Boolean, default=False)
    preprocessing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    explanations: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("results.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    ecg: Mapped[EcgRecord] = relationship(back_populates="results")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="result", order_by="Delivery.id")

    def probabilities(self) -> dict[str, float | None]:
        """Probabilities keyed by vessel."""
        return {"rca": self.p_rca, "lm": self.p_lm, "lad": self.p_lad, "lcx": self.p_lcx}

    def flags(self) -> dict[str, bool]:
        """High-risk flags keyed by vessel."""
        return {"rca": self.flag_rca, "lm": self.flag_lm, "lad": self.flag_lad, "lcx": self.flag_lcx}


class Delivery(Base):
    """One outbound object (SR, PDF, ORU) of one result to one destination."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("result_id", "destination", "object_kind", name="uq_deliveries_result_dest"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    object_kind: Mapped[str] = mapped_column(String(8))  # sr | pdf | oru
    # pending → sending → sent | retrying → … | failed
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_response: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column()
    sent_at: Mapped[dt.datetime | None] = mapped_column()
    object_uid: Mapped[str | None] = mapped_column(String(199))  # SOP Instance UID or MSH-10 sent
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    result: Mapped[Result] = relationship(back_populates="deliveries")


class AuditEvent(Base):
    """An append-only audit event shaped after the DICOM / IHE ATNA audit message, hash-chained."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(16))  # DCM code, e.g. 110104
    event_type: Mapped[str] = mapped_column(String(64), index=True)  # our name, e.g. dicom.received
    action: Mapped[str] = mapped_column(String(1))  # C R U D E
    outcome: Mapped[int] = mapped_column(Integer, default=0)  # 0 4 8 12
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    user: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(32))
    ae_title: Mapped[str | None] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    ecg_id: Mapped[int | None] = mapped_column(Integer)
    query: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: The HMAC key that made ``hash`` (``ecgcad.db.audit_key``); NULL: an unkeyed SHA-256 (before 0004).
    key_id: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        _partial_index("audit_events", "user"),
        _partial_index("audit_events", "patient_id"),
        _partial_index("audit_events", "ecg_id"),
    )


class ApiToken(Base):
    """A bearer token for the API, stored hashed."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()
    last_used_at: Mapped[dt.datetime | None] = mapped_column()


class KvState(Base):
    """Small named state: scheduler and backfill markers."""

    __tablename__ = "kv_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


__all__ = [
    "ApiToken",
    "AuditEvent",
    "Base",
    "Delivery",
    "EcgRecord",
    "IN_DATABASE",
    "Job",
    "KvState",
    "LargeBinary",
    "ModelVersion",
    "Order",
    "Result",
    "SourceObject",
    "utcnow",
]
