"""Size limits on what a DICOM association may make the SCP hold, enforced while the bytes arrive.

pynetdicom appends every data set fragment of a C-STORE to one in-memory buffer and reads every PDU whole,
whatever length its header announces. Two per-association hooks bound both, at the cost of one comparison
per PDU:

* :func:`limit_data_sets`: a C-STORE data set that passes the limit is swapped for a
  :class:`DiscardedDataSet`, which counts the rest of the object and keeps none of it; the association goes
  on reading to the end of the request, so the C-STORE handler can answer it (``0xA700``) and the sender can
  send its next object.
* :func:`limit_pdu_length`: a PDU announcing more than the limit closes the connection before it is read
  (a peer that ignores the maximum PDU length we negotiated could otherwise send an object in one PDU).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer
    from pynetdicom.association import Association
    from pynetdicom.pdu_primitives import P_DATA

__all__ = ["DiscardedDataSet", "limit_data_sets", "limit_pdu_length"]

logger = logging.getLogger(__name__)


class DiscardedDataSet(io.BytesIO):
    """Stands in for a C-STORE data set over the limit: counts the fragments still arriving, keeps none.

    Parameters
    ----------
    received:
        Bytes of the data set received before it was discarded.
    """

    def __init__(self, received: int) -> None:
        super().__init__()
        #: Bytes of the data set received so far, kept or not.
        self.received = received

    def write(self, buffer: ReadableBuffer, /) -> int:
        """Count ``buffer`` and drop it.

        Parameters
        ----------
        buffer:
            A data set fragment.

        Returns
        -------
        int
            Its length in bytes, as if written.
        """
        n = memoryview(buffer).nbytes
        self.received += n
        return n


def limit_data_sets(assoc: Association, max_bytes: int) -> None:
    """Stop keeping a C-STORE data set on ``assoc`` once it passes ``max_bytes``.

    After each P-DATA, a message whose data set buffer holds more than ``max_bytes`` gets a
    :class:`DiscardedDataSet` in its place: the buffer is released at once and the rest of the object is
    only counted. The buffer thus never holds more than ``max_bytes`` plus one PDU; a data set completed by
    the PDU that passes the limit arrives whole, so the handler compares the size with the limit itself.
    Left alone if this pynetdicom has no such DIMSE provider.

    Parameters
    ----------
    assoc:
        A :class:`pynetdicom.association.Association`, before it starts.
    max_bytes:
        Largest data set kept, bytes.
    """
    dimse = getattr(assoc, "dimse", None)
    receive = getattr(dimse, "receive_primitive", None)
    if dimse is None or receive is None:
        return

    def receive_primitive(primitive: P_DATA) -> None:
        receive(primitive)
        message = dimse.message
        data_set = getattr(message, "data_set", None)
        if data_set is not None and data_set.tell() > max_bytes:
            message.data_set = DiscardedDataSet(data_set.tell())

    dimse.receive_primitive = receive_primitive


def limit_pdu_length(assoc: Association, max_bytes: int) -> None:
    """Close ``assoc``'s connection when a PDU announces more than ``max_bytes``, before reading it.

    The announced length is what pynetdicom asks its transport to read; a longer one gets no bytes, which
    pynetdicom treats as a closed connection, and nothing the peer sends afterwards is read.

    Parameters
    ----------
    assoc:
        A :class:`pynetdicom.association.Association` with its socket set, before it starts.
    max_bytes:
        Longest PDU read, bytes (the PDU length field, without the 6-byte header).
    """
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    recv = getattr(sock, "recv", None)
    if sock is None or recv is None:
        return
    cut = False

    def capped_recv(nr_bytes: int) -> bytearray:
        nonlocal cut
        if not cut and nr_bytes <= max_bytes:
            return cast(bytearray, recv(nr_bytes))
        if not cut:
            cut = True
            logger.warning(
                "cutting DICOM connection from %s: PDU of %d bytes, over %d",
                assoc.requestor.address,
                nr_bytes,
                max_bytes,
            )
            with contextlib.suppress(Exception):
                sock.socket.shutdown(socket.SHUT_RDWR)
        return bytearray()

    sock.recv = capped_recv
