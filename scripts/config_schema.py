#!/usr/bin/env python3
"""The JSON Schema of influx-backupd's config, from the config models themselves.

    python scripts/config_schema.py              # writes packaging/config.schema.json
    python scripts/config_schema.py --check      # exit 1 when that file is out of date

Editors read it to complete and check the TOML: Taplo / Even Better TOML with a first line
`#:schema /usr/share/influx-backupd/config.schema.json` (or its URL) in the config. Durations
are strings ("90s", "5m", "7d") as people write them; every key carries its description (the
docstring under its field in core/config.py).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from influx_backupd import __version__
from influx_backupd.core.config import PATH_PATTERN, Settings
from influx_backupd.core.durations import DURATION_PATTERNS

OUT = Path(__file__).resolve().parents[1] / "packaging" / "config.schema.json"


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _durations_as_strings(node: Any) -> Any:
    """A duration's default as people write it ("1h"), not as the seconds it parses to."""
    if isinstance(node, dict):
        is_duration = any(
            isinstance(alt, dict) and alt.get("pattern") in DURATION_PATTERNS
            for alt in node.get("anyOf", [])
        )
        if is_duration and isinstance(node.get("default"), int | float):
            node["default"] = _human(float(node["default"]))
        for value in node.values():
            _durations_as_strings(value)
    elif isinstance(node, list):
        for value in node:
            _durations_as_strings(value)
    return node


def _paths_absolute(node: Any) -> Any:
    """Every path key (format "path") absolute, as load() holds them (config_values.path_problem);
    a key with a stricter pattern of its own (storage.dir) keeps it."""
    if isinstance(node, dict):
        if node.get("format") == "path" and node.get("type") == "string":
            node.setdefault("pattern", PATH_PATTERN)
        for value in node.values():
            _paths_absolute(value)
    elif isinstance(node, list):
        for value in node:
            _paths_absolute(value)
    return node


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The string under each field of cls and the models it inherits from, read from their
    source here, not by pydantic at import (use_attribute_docstrings parses the source of every
    model as the config module loads: 40 ms of each command's start, for text only this schema
    shows)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        assert isinstance(body, ast.ClassDef)
        for field, after in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[field.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _described(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    """Each field's docstring as its description, in model and the models under it."""
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for inner in _models_in(field.annotation):
            _described(inner, seen)
    docs = _attribute_docstrings(model)
    for name, field in model.model_fields.items():
        if field.description is None and name in docs:
            field.description = docs[name]
    model.model_rebuild(force=True)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def schema() -> dict[str, Any]:
    _described(Settings, set())
    body = _paths_absolute(
        _durations_as_strings(Settings.model_json_schema(by_alias=True, mode="validation"))
    )
    for section in body["properties"].values():
        # a whole section's default repeats its keys' own defaults (durations in seconds)
        section.pop("default", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://influx-backupd.invalid/config.schema.json",
        "title": "influx-backupd configuration",
        "description": f"config.toml of influx-backupd {__version__} "
        "(generated by scripts/config_schema.py: do not edit)",
        **{k: v for k, v in body.items() if k not in ("title", "description")},
    }


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the file, write nothing")
    ap.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is out of date: run scripts/config_schema.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
