"""PURE: structured labels — the schema a ``response_format`` asks for, checking replies, typed columns.

``request.response_format`` is sent verbatim. When it is
``{"type": "json_schema", "json_schema": {"schema": {...}}}`` every reply must
be JSON valid against that schema (checked with the ``jsonschema`` library);
``{"type": "json_object"}`` only asks for a JSON object. The valid answer goes
in the ``labels`` column; for a flat object schema each property also gets a
column of its own type in results.parquet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import polars as pl

from .models import RESULT_SCHEMA

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


@dataclass(frozen=True, slots=True)
class LabelSpec:
    schema: dict[str, Any]  # {"type": "object"} when only a JSON object is asked for

    def check(self, text: str | None) -> tuple[str | None, str | None]:
        """(the answer as compact JSON, None) when valid, else (None, why not)."""
        if text is None:
            return None, "the reply has no text"
        match = _FENCE.match(text)
        body = match.group(1) if match else text
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            return None, f"the reply is not JSON ({exc.msg} at position {exc.pos})"
        try:
            jsonschema.validate(value, self.schema, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "the answer"
            return None, f"the reply does not match the schema at {where}: {exc.message}"
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")), None


def label_spec(response_format: dict[str, Any] | None) -> LabelSpec | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return LabelSpec({"type": "object"})
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            jsonschema.Draft202012Validator.check_schema(schema)
            return LabelSpec(schema)
    return None


_SCALARS: dict[str, pl.DataType] = {
    "string": pl.String(),
    "integer": pl.Int64(),
    "number": pl.Float64(),
    "boolean": pl.Boolean(),
}


def _dtype(prop: dict[str, Any]) -> pl.DataType:
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None and "enum" in prop:
        kind = "string"
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = prop.get("items") or {}
        if isinstance(items, dict) and items.get("type") in _SCALARS:
            return pl.List(_SCALARS[items["type"]])
    return pl.String()  # nested objects and mixed types stay JSON text


def typed_columns(schema: dict[str, Any]) -> dict[str, tuple[str, pl.DataType]]:
    """Column name → (property, dtype) for a flat object schema; a name SPEC already uses gets ``label_``."""
    props = schema.get("properties") if schema.get("type") == "object" else None
    if not isinstance(props, dict):
        return {}
    columns = {}
    for name, prop in props.items():
        column = f"label_{name}" if name in RESULT_SCHEMA else name
        columns[column] = (name, _dtype(prop if isinstance(prop, dict) else {}))
    return columns


def label_extender(spec: LabelSpec | None) -> Callable[[pl.DataFrame], pl.DataFrame] | None:
    """The journal's finalize hook: parse ``labels`` into one typed column per property.

    Scalars and lists of scalars are decoded to their types; a nested object
    keeps its JSON text.
    """
    columns = typed_columns(spec.schema) if spec else {}
    if not columns:
        return None
    props = spec.schema["properties"]  # type: ignore[union-attr]
    nested = {c for c, (prop, dtype) in columns.items() if dtype == pl.String() and _is_nested(props.get(prop))}
    struct = pl.Struct([pl.Field(prop, dtype) for c, (prop, dtype) in columns.items() if c not in nested])

    def extend(frame: pl.DataFrame) -> pl.DataFrame:
        try:
            return typed(frame)
        except (pl.exceptions.PolarsError, ValueError):
            # Labels made under another schema (a run continued with --force): the values that do
            # not fit a column's type are null there; the JSON itself stays in ``labels``.
            return leniently_typed(frame)

    def leniently_typed(frame: pl.DataFrame) -> pl.DataFrame:
        answers = [_json_object(text) for text in frame.get_column("labels").to_list()]
        derived = []
        for column, (prop, dtype) in columns.items():
            values = [a.get(prop) for a in answers]
            if column in nested:
                values = [None if v is None else json.dumps(v) for v in values]
            derived.append(_lenient_series(column, values, dtype))
        return frame.with_columns(derived)

    def typed(frame: pl.DataFrame) -> pl.DataFrame:
        decoded = frame.get_column("labels").str.json_decode(struct) if struct.fields else None
        derived = []
        for column, (prop, dtype) in columns.items():
            if column in nested:
                derived.append(pl.col("labels").str.json_path_match(f"$.{prop}").alias(column))
            else:
                derived.append(pl.lit(decoded.struct.field(prop)).cast(dtype).alias(column))  # type: ignore[union-attr]
        return frame.with_columns(derived)

    return extend


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _lenient_series(name: str, values: list[Any], dtype: pl.DataType) -> pl.Series:
    """``values`` as ``dtype``, with whatever does not fit (a string where a number is due) null."""
    fitting = []
    for value in values:
        try:
            fitting.append(pl.Series([value]).cast(dtype, strict=True)[0] if value is not None else None)
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
            fitting.append(None)
    return pl.Series(name, fitting, dtype=dtype)


def _is_nested(prop: Any) -> bool:
    return (
        not isinstance(prop, dict)
        or prop.get("type") in ("object", "array")
        or isinstance(prop.get("type"), list)
        and any(k in ("object", "array") for k in prop["type"])
    )
