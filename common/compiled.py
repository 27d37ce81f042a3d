"""Hot-path statements compiled once per database connection: the bot callbacks, the meeting lock
and the API-key lookup of every API request, where building and compiling a queryset costs more
than running it.

- `CompiledQuery`: a one-parameter queryset (a lock by primary key, a lookup by a unique column).
- `insert(instance)`: what `instance.save()` writes for a new instance with an auto primary key.
- `save_fields_and_insert(instance, names, new)`: what `instance.save(update_fields=names)` and
  `new.save()` write, in one statement (one round trip).

Each is the statement the ORM would send, bound with the fields' own preparation and read back
with Django's own row machinery; with DB_PREPARED_STATEMENTS it is also prepared on the server
once per session. The writes are plain `save()` calls when a model signal has a receiver. Why,
what it costs (Django's compiler internals) and when to remove it:
docs/decisions/0002-prepared-statements.md.
"""
from __future__ import annotations

import re
import weakref
from itertools import count
from typing import Callable

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.models import NOT_PROVIDED, Field, Model, QuerySet, signals
from django.db.models.query import get_related_populators

_ids = count()
# DB-API connection -> names of the statements prepared in its session.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLACEHOLDER = re.compile(r"%[s%]")
# Write plan key -> its prepared statement's name (the same on every connection).
_write_names: dict = {}


def _execute(connection, cursor, name: str, sql: str, params) -> None:
    """`cursor.execute(sql, params)`, as the prepared statement `name` when enabled."""
    if not settings.DB_PREPARED_STATEMENTS:
        cursor.execute(sql, params)
        return
    names = _prepared.get(connection.connection)
    if names is None:
        names = _prepared[connection.connection] = set()
    if name not in names:
        cursor.execute(f"PREPARE {name} AS {_numbered(sql)}")
        names.add(name)
    cursor.execute(f"EXECUTE {name}({', '.join(['%s'] * len(params))})", params)


def _numbered(sql: str) -> str:
    """Django's `%s` placeholders as PostgreSQL's `$1, $2...` (and `%%` as `%`)."""
    numbers = count(1)
    return _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else f"${next(numbers)}", sql)


class CompiledQuery:
    def __init__(self, build: Callable[[object], QuerySet], field: Field, placeholder):
        """`build(value)` returns the queryset for one parameter `value`, which Django binds
        through `field` (e.g. a primary key); `placeholder` is a valid value used to compile it."""
        self._build, self._field, self._placeholder = build, field, placeholder
        self._name = f"botmanager_q{next(_ids)}"
        self._attr = f"_{self._name}"

    def fetch(self, value) -> list:
        """The instances the queryset built with `value` returns (on the default database)."""
        connection = connections[DEFAULT_DB_ALIAS]
        plan = connection.__dict__.get(self._attr)
        if plan is None:
            plan = self._compile(connection)
        sql, compiler, converters, start, end, init_list, populators = plan
        param = self._field.get_db_prep_value(self._field.get_prep_value(value), connection, prepared=True)
        with connection.cursor() as cursor:
            _execute(connection, cursor, self._name, sql, (param,))
            rows = cursor.fetchall()
        if converters:
            rows = compiler.apply_converters(rows, converters)
        model = compiler.query.model
        objects = []
        for row in rows:
            obj = model.from_db(DEFAULT_DB_ALIAS, init_list, row[start:end])
            for populator in populators:
                populator.populate(row, obj)
            objects.append(obj)
        return objects

    def _compile(self, connection):
        queryset = self._build(self._placeholder)
        compiler = queryset.query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        expected = self._field.get_db_prep_value(self._field.get_prep_value(self._placeholder), connection,
                                                 prepared=True)
        if tuple(params) != (expected,) or compiler.annotation_col_map or queryset._known_related_objects:
            raise ValueError(f"CompiledQuery needs a plain queryset with one parameter, got {params!r}")
        # What `compiler.results_iter` would compute for every call.
        converters = compiler.get_converters([column[0] for column in compiler.select[:compiler.col_count]])
        if compiler.has_composite_fields([column[0] for column in compiler.select]):
            raise ValueError("CompiledQuery does not support composite fields")
        select_fields = compiler.klass_info["select_fields"]
        start, end = select_fields[0], select_fields[-1] + 1
        init_list = [column[0].target.attname for column in compiler.select[start:end]]
        populators = get_related_populators(compiler.klass_info, compiler.select, DEFAULT_DB_ALIAS)
        plan = (sql, compiler, converters, start, end, init_list, populators)
        setattr(connection, self._attr, plan)
        return plan


def insert(instance: Model) -> None:
    """`instance.save()` of a new instance on the default database (its auto primary key comes
    back with RETURNING), the INSERT built once per connection and model."""
    model = type(instance)
    if _has_receivers(model) or instance.pk is not None:
        instance.save()
        return
    connection = connections[DEFAULT_DB_ALIAS]
    name, (sql, fields, pk) = _plan(connection, ("insert", model), lambda: _insert_plan(model, connection))
    params = [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields]
    with connection.cursor() as cursor:
        _execute(connection, cursor, name, sql, params)
        (value,) = cursor.fetchone()
    _inserted(instance, pk, value, connection)


def save_fields_and_insert(instance: Model, names: list[str] | tuple[str, ...], new: Model) -> None:
    """`instance.save(update_fields=names)` then `new.save()` (a new instance), sent as one
    statement: `WITH updated AS (UPDATE …) INSERT …`. PostgreSQL runs both to completion; one
    round trip instead of two on the callback path, where every round trip costs two context
    switches. Raises like `save(update_fields=…)` when the UPDATE matched no row (the caller's
    transaction then rolls the INSERT back)."""
    if _has_receivers(type(instance)) or _has_receivers(type(new)) or new.pk is not None:
        instance.save(update_fields=names)
        new.save()
        return
    connection = connections[DEFAULT_DB_ALIAS]
    key = ("update+insert", type(instance), tuple(names), type(new))
    name, (sql, update_fields, update_pk, insert_fields, pk) = _plan(
        connection, key, lambda: _update_and_insert_plan(type(instance), names, type(new), connection))
    params = [field.get_db_prep_save(field.pre_save(instance, False), connection) for field in update_fields]
    params.append(update_pk.get_db_prep_value(instance.pk, connection))
    params += [field.get_db_prep_save(field.pre_save(new, True), connection) for field in insert_fields]
    with connection.cursor() as cursor:
        _execute(connection, cursor, name, sql, params)
        value, updated = cursor.fetchone()
    if updated == 0:
        raise DatabaseError("Save with update_fields did not affect any rows.")
    _inserted(new, pk, value, connection)


def _inserted(instance: Model, pk: Field, value, connection) -> None:
    for converter in pk.get_db_converters(connection):
        value = converter(value, pk, connection)
    setattr(instance, pk.attname, value)
    instance._state.adding = False
    instance._state.db = DEFAULT_DB_ALIAS


def _has_receivers(model) -> bool:
    return signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model)


def _plan(connection, key, build):
    """(statement name, plan) for `key` on this connection, built by `build()` the first time."""
    plans = connection.__dict__.get("_botmanager_compiled_writes")
    if plans is None:
        plans = connection._botmanager_compiled_writes = {}
    plan = plans.get(key)
    if plan is None:
        name = _write_names.setdefault(key, f"botmanager_w{next(_ids)}")
        plan = plans[key] = (name, build())
    return plan


def _update_plan(model, names, connection):
    meta, qn = model._meta, connection.ops.quote_name
    fields = [meta.get_field(name) for name in names]
    for field in fields:
        if not field.concrete or field.primary_key or field.generated or hasattr(field, "get_placeholder"):
            raise ValueError(f"cannot compile an UPDATE of {field!r}")
    table = qn(meta.db_table)
    assignments = ", ".join(f"{qn(field.column)} = %s" for field in fields)
    sql = f"UPDATE {table} SET {assignments} WHERE {table}.{qn(meta.pk.column)} = %s"
    return sql, fields, meta.pk


def _insert_plan(model, connection):
    meta, qn = model._meta, connection.ops.quote_name
    if meta.auto_field is None or meta.pk is not meta.auto_field:
        raise ValueError(f"insert needs a model with an auto primary key, not {model.__name__}")
    fields = [f for f in meta.local_concrete_fields if f is not meta.auto_field and not f.generated]
    if any(hasattr(field, "get_placeholder") or field.db_default is not NOT_PROVIDED for field in fields):
        raise ValueError(f"insert cannot write every field of {model.__name__}")
    table = qn(meta.db_table)
    columns = ", ".join(qn(field.column) for field in fields)
    values = ", ".join("%s" for _ in fields)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING {table}.{qn(meta.pk.column)}"
    return sql, fields, meta.pk


def _update_and_insert_plan(model, names, new_model, connection):
    update_sql, update_fields, update_pk = _update_plan(model, names, connection)
    insert_sql, insert_fields, pk = _insert_plan(new_model, connection)
    sql = f"WITH updated AS ({update_sql} RETURNING 1) {insert_sql}, (SELECT count(*) FROM updated)"
    return sql, update_fields, update_pk, insert_fields, pk
