"""Safe XML parsing for the MUSE and aECG readers (defusedxml: no entity expansion, no external entities)."""

from __future__ import annotations

from collections.abc import Iterator
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from ecgcad.errors import DecodeError

#: Inputs larger than this are refused before parsing (a 12-lead XML export is a few MB at most).
MAX_XML_BYTES = 64 * 1024 * 1024


def parse_xml(data: bytes) -> Element:
    """Parse ``data`` with defusedxml.

    Raises
    ------
    DecodeError
        The document is not well-formed XML, is too large, or uses entities / external references.
    """
    if len(data) > MAX_XML_BYTES:
        raise DecodeError(f"XML document larger than {MAX_XML_BYTES} bytes")
    try:
        return SafeET.fromstring(data)
    except defusedxml.DefusedXmlException as exc:
        raise DecodeError(
            f"XML refused: {type(exc).__name__} (entities and external references are not allowed)"
        ) from exc
    except ParseError as exc:
        raise DecodeError(f"XML is not well-formed: {exc}") from exc
    except (ValueError, LookupError) as exc:  # bad encoding declaration
        raise DecodeError(f"XML cannot be read: {exc}") from exc


def local(tag: object) -> str:
    """Tag name without its ``{namespace}``."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def root_name(data: bytes) -> str | None:
    """Local name of the root element, found cheaply in the first few KB; ``None`` if not XML-like."""
    head = data[:8192]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            head = head.decode("utf-16").encode("utf-8", "replace")
        except UnicodeDecodeError:
            return None
    head = head.lstrip()
    if not head.startswith(b"<"):
        return None
    pos = 0
    while True:
        start = head.find(b"<", pos)
        if start < 0 or start + 1 >= len(head):
            return None
        nxt = head[start + 1 : start + 2]
        if nxt in (b"?", b"!"):
            end = head.find(b">", start)
            if end < 0:
                return None
            pos = end + 1
            continue
        end = start + 1
        while end < len(head) and head[end : end + 1] not in (b" ", b">", b"/", b"\t", b"\r", b"\n"):
            end += 1
        name = head[start + 1 : end].decode("ascii", "replace")
        return name.rsplit(":", 1)[-1]


def children(el: Element, name: str) -> Iterator[Element]:
    """Direct children of ``el`` with local name ``name``."""
    for child in el:
        if local(child.tag) == name:
            yield child


def child(el: Element | None, name: str) -> Element | None:
    """First direct child with local name ``name``."""
    if el is None:
        return None
    return next(children(el, name), None)


def path(el: Element | None, *names: str) -> Element | None:
    """Follow direct children by local names."""
    for name in names:
        el = child(el, name)
    return el


def text(el: Element | None, name: str | None = None) -> str | None:
    """Stripped text of ``el`` (or of its child ``name``); ``None`` if absent or empty."""
    if name is not None:
        el = child(el, name)
    if el is None or el.text is None:
        return None
    value = el.text.strip()
    return value or None
