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

from sqlalchemy import Insert, Table
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction
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
            statement: Any = self.statement
            compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
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

    def execute(self, on: Session | Connection | DirectTransaction, values: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a value of the driver's row (DB-API: untyped)
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
        return _first_value(
            dbapi_connection.execute(compiled.sql, bound if compiled.order is None else compiled.order(bound))
        )


class DirectInsert:
    """``INSERT INTO table (columns) VALUES (…)``, optionally ``ON CONFLICT (column) DO NOTHING`` and
    ``RETURNING column``, run on a :class:`~ecgcad.db.session.DirectTransaction` with its values given in
    ``columns`` order.

    The stop-and-wait HL7 path writes three rows per message, and a :class:`Prepared` statement's binding
    from a dict (defaults, processors, ordering) costs ~5 µs per row on top of SQLite's own ~8 µs. Here the
    caller gives every value in order, and only the columns whose type has a bind processor on the
    dialect (timestamps, JSON) are processed — by that processor, so they are stored exactly as
    SQLAlchemy stores them. Column names come from the table, so a renamed column fails loudly.

    Parameters
    ----------
    table:
        The model's ``Table``.
    columns:
        The columns to insert, in the order of the values; the others get their SQL default or ``NULL``
        (so Python-side defaults must be given explicitly).
    on_conflict:
        A unique column: a row that would duplicate it is not inserted (``execute`` returns ``None``).
    returning:
        The column whose value ``execute`` returns.
    """

    def __init__(
        self,
        table: Table,
        columns: tuple[str, ...],
        *,
        on_conflict: str | None = None,
        returning: str | None = None,
    ) -> None:
        self.table = table
        self.columns = columns
        cols = [table.c[name] for name in columns]  # KeyError for a column the table does not have
        names, marks = ", ".join(c.name for c in cols), ", ".join("?" * len(cols))
        sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"
        if on_conflict is not None:
            sql += f" ON CONFLICT ({table.c[on_conflict].name}) DO NOTHING"
        if returning is not None:
            sql += f" RETURNING {table.c[returning].name}"
        self.sql = sql
        self._processors: dict[str, tuple[tuple[int, Callable[[Any], Any]], ...]] = {}

    def _processors_for(self, dialect: Dialect) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        found = self._processors.get(dialect.name)
        if found is None:
            found = tuple(
                (n, processor)
                for n, name in enumerate(self.columns)
                if (processor := self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                is not None
            )
            self._processors[dialect.name] = found
        return found

    def execute(self, tx: DirectTransaction, *values: object) -> Any:  # noqa: ANN401 - DB-API row value
        """Insert one row; the ``returning`` column's value (``None`` when the row was not inserted)."""
        if tx.dialect.paramstyle != "qmark":
            raise NotImplementedError(f"DirectInsert writes qmark SQL, not {tx.dialect.paramstyle}")
        params = list(values)
        for n, processor in self._processors_for(tx.dialect):
            params[n] = processor(params[n])
        return _first_value(tx.dbapi_connection.execute(self.sql, params))


def insert_ignoring_conflict(dialect: str, model: type[DeclarativeBase], column: str) -> Insert:
    """``INSERT INTO model … ON CONFLICT (column) DO NOTHING`` in ``dialect``'s own construct (PostgreSQL's
    or SQLite's; both take the same arguments), for a :class:`Prepared` statement."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    return dialect_insert(model).on_conflict_do_nothing(index_elements=[column])


def _first_value(cursor: Any) -> Any:  # noqa: ANN401 - a DB-API cursor and its row value (untyped)
    """The first column of the cursor's first row (``None`` without a row or a result), cursor closed."""
    try:
        row = cursor.fetchone() if cursor.description is not None else None
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
def _forget_bound(session: Session, transaction: SessionTransaction) -> None:
    """Drop the kept connection whenever a transaction or savepoint begins or ends: the next statement
    then goes through ``Session.connection()``, which emits a new savepoint's ``SAVEPOINT``."""
    session.info.pop(_BOUND_KEY, None)


__all__ = ["DirectInsert", "Prepared", "bound_to", "insert_ignoring_conflict"]
