"""Reading typed values out of a TOML table: the generic half of agent/config.py.

This module owns how a value of the config file is read and checked against
its type and bounds, how an unknown key is found (with a "did you mean"), and
how the value at fault is shown in the error. agent/config.py owns the schema
(which tables and keys exist, each key's bounds and why) and every rule that
relates one value to another. Pure: nothing here reads a file, except that
`Table.path` resolves against a directory it is given, lexically.

Promises:
- Every error is a `ConfigError` whose `key` is the dotted key at fault
  ("ingest.bind"): the table's name joined with the key, never the bare key.
- Values of the wrong type are described in TOML's words (`string "10"`, not
  `str '10'`), cut to one log line (200 characters).
- A key not given returns the caller's default unchecked: defaults are the
  settings module's and valid by construction.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
from collections.abc import Mapping
from typing import Any, NoReturn

__all__ = [
    "ConfigError",
    "Table",
    "check_shape",
    "describe",
    "show",
    "value_keys",
]


class ConfigError(Exception):
    """The operator wrote a config the agent cannot run on.

    `key` is the dotted key at fault ("ingest.max_frame_bytes"), or "" when the
    file itself is the problem; `path` is the file when one was read.
    """

    def __init__(self, key: str, problem: str, *, path: str | None = None) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem
        self.path = path

    def __str__(self) -> str:
        if self.key:
            return f"{self.key}: {self.problem}"
        if self.path is not None:
            return f"{self.path}: {self.problem}"
        return self.problem


# ---------------------------------------------------------------------------
# Shape: tables, unknown keys


def check_shape(
    tables: Mapping[str, tuple[str, ...]], doc: Mapping[str, Any], table: str = ""
) -> None:
    """Every key of `doc` (the table named `table`) is known to `tables`, and
    every sub-table is a table, recursively. Unknown keys come first because a
    misspelt key explains the value errors that follow it."""
    known = tables[table]
    for key, value in doc.items():
        dotted = f"{table}.{key}" if table else key
        if key not in known:
            kind = "table" if isinstance(value, Mapping) else "key"
            raise ConfigError(dotted, f"unknown {kind}{_suggestion(tables, table, key)}")
        if dotted in tables:
            if not isinstance(value, Mapping):
                raise ConfigError(dotted, f"must be a table, got {describe(value)}")
            check_shape(tables, value, dotted)


def _suggestion(tables: Mapping[str, tuple[str, ...]], table: str, key: str) -> str:
    """ "; did you mean ingest.bind?" for a near miss among the siblings, else
    for the same name in another table (`[ingest] budget_bytes`), else ""."""
    close = difflib.get_close_matches(key, tables[table], n=1, cutoff=0.6)
    if close:
        return f"; did you mean {table + '.' if table else ''}{close[0]}?"
    elsewhere = [k for k in (*value_keys(tables), *tables) if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"; did you mean {' or '.join(elsewhere)}?"
    return ""


def value_keys(tables: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Every dotted key of `tables` that holds a value (not a table), in
    schema order. A key that names another entry of `tables` is a sub-table."""
    return tuple(
        f"{table}.{key}" if table else key
        for table, keys in tables.items()
        for key in keys
        if (f"{table}.{key}" if table else key) not in tables
    )


# ---------------------------------------------------------------------------
# Values


def _toml_type(value: object) -> str:
    # The operator wrote TOML, so speak TOML's type names. bool first: it is an int.
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime.datetime):
        return "datetime"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, datetime.time):
        return "time"
    return type(value).__name__


def show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        return "{...}"
    else:
        text = repr(value)
    # Long enough for any valid endpoint or path, short enough for one line of a log.
    return text if len(text) <= 200 else text[:197] + "..."


def describe(value: object) -> str:
    """`string "10"`: for a value of the wrong type, say what was given."""
    if isinstance(value, Mapping):
        return "table"
    return f"{_toml_type(value)} {show(value)}"


class Table:
    """One table of the document being read: hands out validated values."""

    def __init__(self, name: str, doc: Mapping[str, Any]) -> None:
        self.name = name
        self.doc = doc

    def key(self, name: str) -> str:
        return f"{self.name}.{name}" if self.name else name

    def has(self, name: str) -> bool:
        return name in self.doc

    def sub(self, name: str) -> Table:
        # check_shape has made sure that a sub-table, when present, is a table.
        return Table(self.key(name), self.doc.get(name, {}))

    def fail(self, name: str, problem: str) -> NoReturn:
        raise ConfigError(self.key(name), problem)

    def integer(self, name: str, default: int, lo: int, hi: int | None) -> int:
        if not self.has(name):
            return default
        value = self.doc[name]
        want = f"an integer between {lo} and {hi}" if hi is not None else f"an integer >= {lo}"
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be {want}, got {describe(value)}")
        if value < lo or (hi is not None and value > hi):
            self.fail(name, f"must be {want}, got {value}")
        return value

    def number(self, name: str, default: float, lo_excl: float, hi: float) -> float:
        if not self.has(name):
            return default
        value = self.doc[name]
        want = f"a number greater than {lo_excl:g} and at most {hi:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"must be {want}, got {describe(value)}")
        # Written so NaN fails too (every comparison with NaN is false).
        if not (lo_excl < value <= hi):
            self.fail(name, f"must be {want}, got {show(value)}")
        return float(value)

    def string(self, name: str, default: str) -> str:
        if not self.has(name):
            return default
        value = self.doc[name]
        if not isinstance(value, str):
            self.fail(name, f"must be a string, got {describe(value)}")
        if not value:
            self.fail(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if not self.has(name):
            return default
        value = self.doc[name]
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, got {describe(value)}")
        return value

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self.doc[name]
        if not isinstance(value, list):
            # The likeliest slip: `bind = "tcp://..."` for `bind = ["tcp://..."]`.
            hint = f" (write [{show(value)}])" if isinstance(value, str) else ""
            self.fail(name, f"must be an array of strings, got {describe(value)}{hint}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(name, f"must be an array of strings, item {i} is {describe(item)}")
            if not item:
                self.fail(name, f"must be an array of non-empty strings, item {i} is empty")
        return tuple(value)

    def path(self, name: str, base: str | None) -> str:
        value = self.string(name, "")
        if "\0" in value:
            self.fail(name, "must not contain a NUL character")
        if value.startswith("~"):
            self.fail(name, f"{show(value)}: '~' is not expanded here; write the full path")
        if os.path.isabs(value):
            return os.path.normpath(value)
        if base is None:
            self.fail(
                name,
                f"relative path {show(value)} needs a base directory: write an absolute "
                "path, or load the file with load_config (relative paths are resolved "
                "against the config file's directory)",
            )
        return os.path.normpath(os.path.join(base, value))
