"""The ecgcad exception tree.

Every error raised on purpose by ecgcad derives from :class:`EcgcadError`::

    EcgcadError
    ├── ConfigurationError        settings file / environment / flags are invalid
    ├── DecodeError               an input object cannot be turned into a canonical Ecg
    │   └── UnsupportedFormatError    the input is not a format we read (or a refused SOP class)
    ├── NotScorableError          the ECG fails the quality / intended-use gate
    ├── ModelError                model construction or prediction failed
    │   └── CheckpointError           a checkpoint is unreadable, or its keys / shapes do not match
    ├── StorageError              the database or the object store failed
    │   ├── BackPressureError         queue too deep or disk under its reserve: the sender should retry
    │   └── AuditIntegrityError       the audit chain does not match its key or its last checkpoint
    ├── NestedWriteError          a write session opened inside another one of the same thread
    ├── QueueError                job queue misuse (unknown kind, unknown job)
    ├── BuildError                an outbound object (SR, PDF, ORU) could not be built validly
    └── DeliveryError             a destination refused or did not confirm an outbound message
        └── PermanentDeliveryError    the destination refused for good (no retry)

Protocol boundaries (the DICOM SCP, the MLLP server, the API, the CLI) translate these into DIMSE
statuses, HL7 ACK codes, HTTP statuses and exit codes; nothing inside the package does.
"""

from __future__ import annotations


class EcgcadError(Exception):
    """An ecgcad error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class ConfigurationError(EcgcadError):
    """The configuration is invalid."""


class DecodeError(EcgcadError):
    """The input cannot be decoded to a canonical ECG."""


class UnsupportedFormatError(DecodeError):
    """The input is not in a supported ECG format."""


class NotScorableError(EcgcadError):
    """The ECG does not pass the quality and intended-use gate."""


class ModelError(EcgcadError):
    """The model failed."""


class CheckpointError(ModelError):
    """The checkpoint cannot be loaded."""


class StorageError(EcgcadError):
    """Storage (database or object store) failed."""


class BackPressureError(StorageError):
    """The service is out of resources; retry later."""


class AuditIntegrityError(StorageError):
    """The audit trail does not match its key or its last checkpoint."""


class NestedWriteError(EcgcadError):
    """A write session was opened inside another write session of the same thread.

    Refused at once: on SQLite the inner one would wait out the busy timeout for the lock its own thread
    holds (and every other writer of the process with it); on PostgreSQL it could wait forever on a row
    the outer one has locked. Write in one session, or after the outer one has ended.
    """


class QueueError(EcgcadError):
    """The job queue was used incorrectly."""


class BuildError(EcgcadError):
    """An outbound object could not be built."""


class DeliveryError(EcgcadError):
    """The destination did not confirm the message."""


class PermanentDeliveryError(DeliveryError):
    """The destination refused the message permanently."""
