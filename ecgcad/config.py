"""Settings: one typed object, read from a TOML file, then ``ECGCAD_*`` environment, then CLI flags.

The keys below are a public contract (files written by people and by tests outside the repository)::

    data_dir = "var"
    database_url = ""            # empty → sqlite:///<data_dir>/ecgcad.db

    [dicom]   ae_title, host, port, allowed_calling_aets, ...
    [hl7]     host, port, ...
    [api]     host, port, trusted_proxies, docs, ...
    [model]   checkpoint, device, max_batch, max_wait_ms, optimize, compile_cache_dir
    [thresholds] rca, lm, lad, lcx
    [[destinations]] name, kind, host, port, ae_title, send
    [queue]   engine, lease_s, max_attempts, ...
    [retention] dicom_days, hl7_days, file_days, pacs_days
    [[pacs_sources]] name, host, port, ae_title, retrieve, catch_up, interval_s

Unknown keys and bad values are a start-up error naming the key (:class:`ConfigurationError`).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ecgcad.errors import ConfigurationError

ENV_PREFIX = "ECGCAD_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsSettings(_Section):
    """TLS for a listener (DICOM TLS profile / MLLP over TLS)."""

    enabled: bool = Field(False, description="Wrap accepted connections in TLS.")
    certificate: str = Field("", description="PEM certificate file of this service.")
    private_key: str = Field("", description="PEM private key file of this service.")
    ca_certificates: str = Field("", description="PEM bundle of CAs trusted for client certificates.")
    require_client_certificate: bool = Field(False, description="Refuse peers without a valid certificate.")


class DicomSettings(_Section):
    """The DICOM C-STORE SCP."""

    ae_title: str = Field("ECGCAD", description="Our AE title (1–16 characters).")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(11112, ge=0, le=65535, description="TCP port (0 = ephemeral).")
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Empty = any (warned at start)."
    )
    allowed_addresses: list[str] = Field(default_factory=list, description="Peer IPs/CIDRs; empty = any.")
    max_pdu: int = Field(262144, ge=0, description="Maximum PDU length we receive, bytes (0 = unlimited).")
    max_associations: int = Field(32, ge=1, description="Concurrent associations.")
    max_object_mb: int = Field(
        64,
        ge=1,
        le=128,
        description=(
            "Largest C-STORE data set we accept, MiB; a larger one is refused 0xA700 while it streams in"
            " (at most 128, the readers' decode limit)."
        ),
    )
    network_timeout_s: float = Field(
        60.0, gt=0, description="Seconds of silence before an association is aborted."
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, v: str) -> str:
        if not 1 <= len(v.strip()) <= 16 or "\\" in v:
            raise ValueError("AE title must be 1–16 characters without backslash")
        return v.strip()


class Hl7Settings(_Section):
    """The HL7 v2 MLLP server."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(2575, ge=0, le=65535, description="TCP port (0 = ephemeral).")
    max_message_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Larger frames get AR and the connection closes."
    )
    idle_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A connection is closed after this many seconds without an accepted (stored) message.",
    )
    max_connections: int = Field(200, ge=1, description="Concurrent connections.")
    max_connections_per_address: int = Field(
        20, ge=1, description="Concurrent connections from one peer address."
    )
    max_consecutive_rejections: int = Field(
        10,
        ge=1,
        description="A connection is closed after this many rejected (AR) messages in a row.",
    )
    accept_other_types: bool = Field(
        False, description="Acknowledge (AA) message types we do not use instead of AR."
    )
    application: str = Field("ECGCAD", description="Our MSH-3 / MSH-5 sending/receiving application.")
    facility: str = Field("", description="Our facility (MSH-4 / MSH-6).")
    allowed_addresses: list[str] = Field(default_factory=list, description="Peer IPs/CIDRs; empty = any.")
    tls: TlsSettings = Field(default_factory=TlsSettings)


class ReportSettings(_Section):
    """What the outbound SR, PDF and ORU look like (site profile)."""

    sr_sop_class: Literal["comprehensive", "comprehensive3d"] = Field(
        "comprehensive", description="Comprehensive SR (…88.33) or Comprehensive 3D SR (…88.34)."
    )
    manufacturer: str = Field("ecgcad", description="Manufacturer of the SR/PDF and of the algorithm.")
    institution_name: str = Field("", description="Institution Name of the SR; empty keeps the source's.")
    oru_result_status: Literal["P", "F"] = Field(
        "P", description="OBR-25/OBX-11 of first results: P preliminary or F final."
    )
    not_evaluated_mode: Literal["IND", "X"] = Field(
        "IND", description="IND: OBX-8 IND; X: also OBR-25/OBX-11 X."
    )
    oru_include_pdf: bool = Field(False, description="Embed the report PDF in the ORU as an ED OBX.")
    oru_accession_field: Literal["OBR-18", "OBR-20", "none"] = Field(
        "OBR-18", description="Where the accession goes."
    )
    oru_include_pv1: bool = Field(False, description="Always send PV1.")
    explanation_steps: int = Field(
        8, ge=1, le=64, description="Integrated-gradient steps for the PDF's explanation windows."
    )


class AuditSyslogSettings(_Section):
    """Forwarding of audit events to an ATNA audit repository (syslog RFC 5424 over TLS, RFC 5425)."""

    enabled: bool = Field(False, description="Forward every audit event.")
    host: str = Field("127.0.0.1", description="Audit repository host.")
    port: int = Field(6514, ge=1, le=65535, description="Audit repository port (6514 = syslog over TLS).")
    tls: bool = Field(True, description="TLS (RFC 5425); false = plain TCP (RFC 6587 octet counting).")
    ca_certificates: str = Field("", description="PEM CAs that sign the repository's certificate.")
    certificate: str = Field(
        "", description="Our client certificate (PEM), when the repository asks for one."
    )
    private_key: str = Field("", description="Our client key (PEM).")
    app_name: str = Field("ecgcad", description="Syslog APP-NAME and AuditSourceID.")
    interval_s: float = Field(2.0, gt=0, description="How often new events are forwarded, seconds.")


class AuditSettings(_Section):
    """The audit trail's key and its checkpoints (see ``docs/api.md``, "What the audit chain proves").

    Every audit event's hash is an HMAC-SHA-256 keyed with a secret kept outside the database; signed
    checkpoints (event count + head hash) are written to a file outside the database and, when
    ``[audit_syslog]`` is on, forwarded to the audit repository. ``ecgcad audit verify`` checks both.
    """

    key: SecretStr = Field(
        SecretStr(""),
        description=(
            "The chain's HMAC key (at least 32 characters; prefer ECGCAD_AUDIT__KEY). Empty = the key file."
            " Every process writing to one database needs the same key."
        ),
    )
    key_file: str = Field(
        "",
        description=(
            "File holding the HMAC key; empty → <data_dir>/audit.key, created (0600) with a random key if"
            " missing. Scale-out: the same file (or key) on every node."
        ),
    )
    checkpoint_file: str = Field(
        "", description="Signed checkpoint of the chain; empty → <data_dir>/audit-checkpoint.json (0600)."
    )
    checkpoint_interval_s: float = Field(
        300.0,
        gt=0,
        description=(
            "How often the scheduler role writes a checkpoint, seconds (also at start and clean stop)."
            " Events after the last checkpoint can be removed from the tail undetected."
        ),
    )

    @field_validator("key")
    @classmethod
    def _check_key(cls, v: SecretStr) -> SecretStr:
        if v.get_secret_value() and len(v.get_secret_value().strip()) < 32:
            raise ValueError("the audit key must have at least 32 characters")
        return v


class ApiSettings(_Section):
    """The admin / results API and dashboard."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = ephemeral).")
    metrics_public: bool = Field(True, description="Serve /metrics without a token.")
    enabled: bool = Field(True, description="Start the API with `ecgcad serve`.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            "Reverse-proxy addresses or CIDRs whose X-Forwarded-For / X-Forwarded-Proto are believed "
            "(the client address in audit events); empty (default) = trust none, use the TCP peer."
        ),
    )
    docs: bool = Field(
        True,
        description="Serve /docs and /openapi.json to authenticated callers (true, default) or not at all.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            try:
                out.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        return out


class ModelSettings(_Section):
    """The scoring model."""

    checkpoint: str = Field("", description="Checkpoint file; empty → the built-in demonstration model.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    max_batch: int = Field(64, ge=1, description="Largest micro-batch per forward pass.")
    max_wait_ms: int = Field(20, ge=0, description="How long the worker waits to fill a micro-batch, ms.")
    optimize: Literal["auto", "none", "fold", "compile"] = Field(
        "auto",
        description="Forward pass: auto (= fold) | none (reference module) | fold (batch-norm folded, "
        "channels-last) | compile (fold + torch.compile; minutes of cold start, cached). "
        "See docs/performance.md.",
    )
    compile_cache_dir: str = Field(
        "", description="Cache of compiled artefacts for optimize = compile; empty = torch's default."
    )
    shadow_checkpoint: str = Field(
        "", description="Optional second model run in shadow mode (stored, never sent)."
    )


class ThresholdSettings(_Section):
    """Per-vessel high-risk thresholds on the predicted probability (paper defaults)."""

    rca: float = Field(0.15, ge=0, le=1)
    lm: float = Field(0.01, ge=0, le=1)
    lad: float = Field(0.15, ge=0, le=1)
    lcx: float = Field(0.15, ge=0, le=1)
    screening_rca: float | None = Field(
        None, ge=0, le=1, description="Optional screening cut (95 % specificity)."
    )
    screening_lm: float | None = Field(None, ge=0, le=1)
    screening_lad: float | None = Field(None, ge=0, le=1)
    screening_lcx: float | None = Field(None, ge=0, le=1)

    def as_dict(self) -> dict[str, float]:
        """Thresholds keyed by vessel in model output order."""
        return {"rca": self.rca, "lm": self.lm, "lad": self.lad, "lcx": self.lcx}


class GateSettings(_Section):
    """The quality and intended-use gate (before scoring)."""

    min_age_years: int = Field(18, ge=0, description="Patients younger than this are not evaluated.")
    min_sampling_rate_hz: float = Field(250.0, gt=0)
    min_duration_s: float = Field(10.0, gt=0)
    window_policy: Literal["first", "best"] = Field("first", description="Which 10 s of a longer record.")
    min_independent_leads: int = Field(
        8, ge=1, le=12, description="Fewer independent leads (2 limb + precordial found) → too_few_leads."
    )
    flat_range_mv: float = Field(
        0.05, ge=0, description="A lead whose 0.5–99.5 % range is below this (mV) is flat."
    )
    disconnected_nan_fraction: float = Field(
        0.5, ge=0, le=1, description="A lead with more missing (padding) samples than this is disconnected."
    )
    saturation_fraction: float = Field(
        0.02, gt=0, le=1, description="Fraction of samples on a lead's extreme value that means clipping."
    )
    noise_mv: float = Field(
        0.1, gt=0, description="Robust SD of the > 40 Hz content (mV) above which → noise."
    )
    baseline_wander_mv: float = Field(
        2.0, gt=0, description="Range of the < 0.7 Hz content (mV) above which → baseline_wander."
    )
    pace_slope_mv_per_ms: float = Field(1.0, gt=0, description="Slope (mV/ms) of a pacemaker spike.")
    min_pace_spikes: int = Field(
        3, ge=1, description="Pacemaker spikes in a record that mean a paced rhythm."
    )


class DestinationSettings(_Section):
    """One outbound destination (PACS over DICOM, EHR over HL7/MLLP)."""

    name: str
    kind: Literal["dicom", "hl7"]
    host: str = "127.0.0.1"
    port: int = Field(..., ge=1, le=65535)
    ae_title: str = Field("", description="Called AE title (dicom).")
    send: list[Literal["sr", "pdf", "oru"]] = Field(default_factory=list, description="What to send.")
    timeout_s: float = Field(30.0, gt=0, description="Seconds to wait for the peer's confirmation.")
    max_attempts: int = Field(10, ge=1, description="Attempts before the delivery is failed (dead letter).")
    keep_open_s: float = Field(
        1.0,
        ge=0,
        description=(
            "Seconds an idle connection to this destination is kept open for the next object; 0 opens one per "
            "object. Keep it short for a peer that serves one association at a time (dcmtk storescp) when "
            "several delivery processes send to it: the others wait while it is held."
        ),
    )
    tls: bool = False
    enabled: bool = True
    ordered_per_patient: bool = Field(
        False,
        description="Send a patient's results in the order they were made (a later one waits for earlier ones).",
    )

    @model_validator(mode="after")
    def _defaults(self) -> DestinationSettings:
        if not self.send:
            self.send = ["sr"] if self.kind == "dicom" else ["oru"]
        if self.kind == "dicom" and not self.ae_title:
            raise ValueError("a dicom destination needs ae_title")
        return self


class QueueSettings(_Section):
    """The job queue."""

    max_attempts: int = Field(5, ge=1, description="Attempts before a job is failed (dead letter).")
    delivery_workers: int = Field(
        2, ge=1, description="Threads sending results (network-bound, separate from scoring)."
    )
    delivery_processes: int = Field(
        0, ge=0, description="Delivery workers in their own processes (use another core); 0 = threads only."
    )
    lease_s: float = Field(
        120.0, gt=0, description="A claimed job not finished within this is claimable again."
    )
    backoff_base_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt.")
    backoff_max_s: float = Field(600.0, gt=0)
    max_depth: int = Field(
        100_000, ge=1, description="Back-pressure: refuse new input above this queue depth."
    )
    min_free_disk_mb: int = Field(
        512, ge=0, description="Back-pressure: refuse new input under this free space."
    )
    engine: Literal["auto", "sql", "procrastinate"] = Field(
        "auto",
        description="Queue engine: auto = procrastinate on PostgreSQL, the embedded SQL engine on SQLite.",
    )


class RetentionSettings(_Section):
    """How long raw received objects are kept (the nightly ``retention`` job); 0 keeps them for ever.

    Only the raw bytes are deleted (``SourceObject.deleted_at`` is set): ECG rows, results, deliveries and
    the audit trail stay. Objects whose ECG is still queued, failing or not yet delivered are never deleted.
    """

    dicom_days: int = Field(0, ge=0, description="DICOM objects received by the SCP, days (0 = keep).")
    hl7_days: int = Field(0, ge=0, description="HL7 v2 messages, days (0 = keep).")
    file_days: int = Field(0, ge=0, description="Files ingested from folders or the CLI, days (0 = keep).")
    pacs_days: int = Field(0, ge=0, description="Objects retrieved from a PACS (C-GET), days (0 = keep).")
    batch_size: int = Field(500, ge=1, description="Objects deleted per transaction.")

    def days_for(self, kind: str) -> int:
        """Retention in days for a source object kind (0 = keep)."""
        return int(getattr(self, f"{kind}_days", 0))


class PacsSourceSettings(_Section):
    """A PACS we query (C-FIND) and retrieve from (C-MOVE to our SCP, or C-GET) for backfill and catch-up."""

    name: str
    host: str = "127.0.0.1"
    port: int = Field(..., ge=1, le=65535)
    ae_title: str = Field(..., description="Called AE title of the PACS.")
    retrieve: Literal["move", "get"] = Field("move", description="C-MOVE to our SCP, or C-GET.")
    move_destination: str = Field(
        "", description="AE title the PACS sends C-MOVE results to (empty = our dicom.ae_title)."
    )
    catch_up: bool = Field(False, description="Run the scheduled catch-up job for this PACS.")
    interval_s: int = Field(900, ge=60, description="Catch-up period, seconds.")
    timeout_s: float = Field(60.0, gt=0, description="DIMSE / network timeout, seconds.")


class Settings(BaseSettings):
    """All ecgcad settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    data_dir: Path = Field(Path("var"), description="Everything embedded lives here.")
    database_url: SecretStr = Field(SecretStr(""), description="Empty → sqlite:///<data_dir>/ecgcad.db.")
    log_level: str = Field("INFO", description="Python logging level.")
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    audit_syslog: AuditSyslogSettings = Field(default_factory=AuditSyslogSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    thresholds: ThresholdSettings = Field(default_factory=ThresholdSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    destinations: list[DestinationSettings] = Field(default_factory=list)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    pacs_sources: list[PacsSourceSettings] = Field(default_factory=list)
    intended_use: str = Field(
        "Decision support: estimates the risk of severe (>=70 %) or complete stenosis of the RCA, LM, LAD "
        "and LCX from a resting 12-lead ECG in adults. Not a diagnosis.",
        description="Intended-use text printed on every report.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (CLI flags) > environment > file (passed through init as the lowest layer, see load_settings)
        return (init_settings, env_settings)

    @model_validator(mode="after")
    def _unique_destinations(self) -> Settings:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique")
        return self

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL, with the embedded default resolved."""
        url = self.database_url.get_secret_value()
        if url:
            return url
        return f"sqlite:///{(self.data_dir / 'ecgcad.db').resolve()}"

    @property
    def audit_key_file(self) -> Path:
        """The audit HMAC key file (``[audit] key_file``, default ``<data_dir>/audit.key``)."""
        return Path(self.audit.key_file) if self.audit.key_file else self.data_dir / "audit.key"

    @property
    def audit_checkpoint_file(self) -> Path:
        """The audit checkpoint file (``[audit] checkpoint_file``, default ``<data_dir>/audit-checkpoint.json``)."""
        if self.audit.checkpoint_file:
            return Path(self.audit.checkpoint_file)
        return self.data_dir / "audit-checkpoint.json"

    @property
    def is_embedded(self) -> bool:
        """True when running on SQLite (embedded engine)."""
        return self.effective_database_url.startswith("sqlite")

    def pacs_source(self, name: str) -> PacsSourceSettings:
        """The PACS source called ``name``."""
        for p in self.pacs_sources:
            if p.name == name:
                return p
        raise ConfigurationError(f"no PACS source named {name!r}")

    def destination(self, name: str) -> DestinationSettings:
        """The destination called ``name``."""
        for d in self.destinations:
            if d.name == name:
                return d
        raise ConfigurationError(f"no destination named {name!r}")

    def transport_dict(self) -> dict[str, Any]:
        """Settings as a JSON-able dict *with* secrets, to rebuild them in a spawned child process
        (``load_settings(None, **d)``). Never print or log it."""
        data = self.model_dump(mode="json")
        data["database_url"] = self.database_url.get_secret_value()
        data["audit"]["key"] = self.audit.key.get_secret_value()
        return data

    def masked_dict(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked (for ``config show``)."""
        data = self.model_dump(mode="json")
        url = self.database_url.get_secret_value()
        data["database_url"] = _mask_url(url) if url else ""
        data["effective_database_url"] = _mask_url(self.effective_database_url)
        return data


def _mask_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_overrides() -> dict[str, Any]:
    """``ECGCAD_A__B=v`` → ``{"a": {"b": v}}`` (values parsed by pydantic; JSON for lists)."""
    import json

    out: dict[str, Any] = {}
    for key, value in os.environ.items():
        if not key.startswith(ENV_PREFIX) or key == "ECGCAD_CONFIG":
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        parsed: Any = value
        if value.startswith(("[", "{")):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = parsed
    return out


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: object) -> Settings:
    """Load settings: TOML file (``config_file`` or ``$ECGCAD_CONFIG``), then environment, then ``overrides``.

    Parameters
    ----------
    config_file:
        A TOML file; ``None`` uses ``$ECGCAD_CONFIG`` if set.
    overrides:
        Values from CLI flags, nested as dicts (``dicom={"port": 0}``); ``None`` values are ignored.

    Raises
    ------
    ConfigurationError
        The file is unreadable, or a key is unknown or a value invalid (the message names the key).
    """
    path = config_file or os.environ.get("ECGCAD_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigurationError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from exc
    data = _deep_merge(data, _env_overrides())
    data = _deep_merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        # Environment is already merged above (so that nested keys combine with the file); pass all as init.
        return _SettingsNoEnv(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{loc}: {msg}")
        raise ConfigurationError("invalid configuration: " + "; ".join(lines)) from exc


class _SettingsNoEnv(Settings):
    """Settings built only from the merged dict (env merged by :func:`load_settings`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)
