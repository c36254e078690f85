"""Statements compiled once and run on the driver's cursor: the hot path of ingest.

SQLAlchemy Core costs about 80 µs per statement on this path (an execution context, the result machinery,
events) where the SQL itself takes 10–15 µs; an HL7 message runs five of them before its commit. A
:class:`Prepared` statement is a Core statement compiled once per dialect: its SQL text, the order of its
parameters and the dialect's bind processors (dates and JSON as SQLAlchemy would store them). Executing it
binds the values and runs the text on the DBAPI cursor of the caller's connection — the same connection,
so the same transaction as everything else the caller does.

An ``INSERT`` is compiled for the keys it is given (once per dialect and sequence of keys); the columns'
Python-side defaults fill the others, as SQLAlchemy would (a callable default is called without an
execution context, so it must not need one). Expanding ``IN`` parameters are not supported.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from ecgcad.db.session import DirectTransaction


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    #: The parameters from a dict of values: a tuple in the placeholders' order (positional paramstyle),
    #: or ``None`` to pass the dict itself (named paramstyle).
    order: Callable[[dict[str, Any]], tuple[Any, ...]] | None
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    #: Values for the parameters not given: the values bound in the statement and the columns' scalar
    #: Python-side defaults (``fixed``), and their callable defaults (``generated``).
    fixed: dict[str, Any]
    generated: tuple[tuple[str, Callable[[Any], Any]], ...]


def _getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(names) == 1:
        (name,) = names
        return lambda values: (values[name],)
    if not names:
        return lambda values: ()
    return operator.itemgetter(*names)  # type: ignore[return-value]


class Prepared:
    """A Core statement, compiled once per dialect and set of keys, run on the DBAPI cursor.

    Parameters
    ----------
    statement:
        A Core ``SELECT``, ``INSERT`` (values given at execution) or ``UPDATE`` with bound parameters.
    """

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}
        self._lock = threading.Lock()

    def _compile(self, dialect: Dialect, given: tuple[str, ...]) -> _Compiled:
        with self._lock:
            keys = set(given)
            compiled = self.statement.compile(dialect=dialect, column_keys=sorted(keys))  # type: ignore[attr-defined]
            params = set(compiled.bind_names.values())
            fixed: dict[str, Any] = {}
            generated: list[tuple[str, Callable[[Any], Any]]] = []
            for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
                if column.key in keys or column.default is None:
                    continue
                if column.default.is_callable:
                    generated.append((column.key, column.default.arg))
                else:
                    fixed[column.key] = column.default.arg
            # Values bound in the statement itself (a LIMIT, a literal in a WHERE).
            for bind, name in compiled.bind_names.items():
                if name in keys or name in fixed or bind.required or bind.callable is not None:
                    continue
                if name not in {n for n, _ in generated}:
                    fixed[name] = bind.effective_value
            missing = params - keys - set(fixed) - {name for name, _ in generated}
            if missing:
                raise ValueError(f"prepared statement needs values for {sorted(missing)}")
            processors = tuple(
                (name, processor)
                for name, processor in compiled._bind_processors.items()  # noqa: SLF001 - the dialect's own
                if processor is not None and name in params
            )
            order = _getter(tuple(compiled.positiontup)) if compiled.positional else None
            found = _Compiled(compiled.string, order, processors, fixed, tuple(generated))
            self._compiled[(dialect.name, given)] = found
        return found

    def execute(self, on: Session | Connection | DirectTransaction, values: Mapping[str, Any]) -> Any:
        """Run with ``values`` in the transaction of ``on`` (a session, a connection or a
        :class:`~ecgcad.db.session.DirectTransaction`); the first column of the first row, or ``None``."""
        dialect, dbapi_connection = bound_to(on)
        given = tuple(values)
        compiled = self._compiled.get((dialect.name, given)) or self._compile(dialect, given)
        bound = {**compiled.fixed, **values}
        for name, default in compiled.generated:
            bound[name] = default(None)
        for name, processor in compiled.processors:
            bound[name] = processor(bound[name])
        # ``Connection.execute`` (sqlite3 and psycopg both have it): a cursor, executed.
        cursor = dbapi_connection.execute(
            compiled.sql, bound if compiled.order is None else compiled.order(bound)
        )
        try:
            if cursor.description is None:
                return None
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()


def bound_to(on: Session | Connection | DirectTransaction) -> tuple[Dialect, Any]:
    """The dialect and the DBAPI connection of ``on``'s transaction (begun if need be).

    For a session both are kept in ``session.info`` until its transaction ends (``Session.connection()``
    costs ~30 µs, and the ingest path runs several statements per object).
    """
    if isinstance(on, DirectTransaction):
        return on.dialect, on.dbapi_connection
    if isinstance(on, Connection):
        return on.dialect, on.connection.dbapi_connection
    found = on.info.get(_BOUND_KEY)
    if found is None:
        conn = on.connection()
        found = (conn.dialect, conn.connection.dbapi_connection)
        on.info[_BOUND_KEY] = found
    return found  # type: ignore[no-any-return]


_BOUND_KEY = "ecgcad_prepared_bound"


@sa_event.listens_for(Session, "after_transaction_create")
@sa_event.listens_for(Session, "after_transaction_end")
def _forget_bound(session: Session, transaction: Any) -> None:
    """Drop the kept connection whenever a transaction or savepoint begins or ends: the next statement
    then goes through ``Session.connection()``, which emits a new savepoint's ``SAVEPOINT``."""
    session.info.pop(_BOUND_KEY, None)


__all__ = ["Prepared", "bound_to"]
