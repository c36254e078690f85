"""Shared validation of the integer parameters that reach the database: page cursors and row ids.

Database ids are signed 64-bit integers (SQLite ``INTEGER``, PostgreSQL ``bigint``). A larger number in a
query would not fit the driver's parameter and end as an HTTP 500, so every route that takes a ``cursor``
declares it as :data:`Cursor` and a value that is not an integer from 0 to :data:`INT64_MAX` is answered
**400** with :data:`CURSOR_MESSAGE` (see :func:`validation_error_handler`). A path id outside that range
names no row, so the lookups answer it like any unknown id (:func:`fits_int64`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

CURSOR_MESSAGE = f"cursor must be an integer from 0 to {INT64_MAX}: use the `next` link of the previous page"

#: The ``cursor`` query parameter of every paged route (the id the next page starts below).
Cursor = Annotated[
    int | None,
    Query(
        ge=0,
        le=INT64_MAX,
        description="From the previous page's `next` (an integer from 0 to 2^63-1; anything else is 400).",
    ),
]


def fits_int64(value: int) -> bool:
    """True when ``value`` can be a database id (a signed 64-bit integer).

    Parameters
    ----------
    value:
        An id taken from a request.

    Returns
    -------
    bool
        False for numbers no row can have; callers treat them as unknown ids.
    """
    return INT64_MIN <= value <= INT64_MAX


def _is_cursor_error(error: object) -> bool:
    loc = error.get("loc", ()) if isinstance(error, dict) else ()
    return tuple(loc[:2]) == ("query", "cursor")


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """Answer a bad ``cursor`` with 400 and :data:`CURSOR_MESSAGE`; other validation errors stay 422.

    Parameters
    ----------
    request:
        The refused request.
    exc:
        The :class:`~fastapi.exceptions.RequestValidationError` FastAPI raised.

    Returns
    -------
    Response
        400 ``{"detail": CURSOR_MESSAGE}`` when the cursor is among the errors, else FastAPI's usual 422.
    """
    assert isinstance(exc, RequestValidationError)
    if any(_is_cursor_error(e) for e in exc.errors()):
        return JSONResponse({"detail": CURSOR_MESSAGE}, status_code=400)
    return await request_validation_exception_handler(request, exc)
