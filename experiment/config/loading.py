"""Reading config files (docs/CONFIG.md): `file:` includes, `customizations` expansion, command-line
overrides, then validation (experiment/config/schema.py). Nothing here writes anything.

While loading, every value travels as a `_Sourced` node that remembers the file that set it, so merges,
customizations and overrides carry provenance along for free and a validation error can name the file
a bad value came from rather than the top file.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiment.config.schema import (
    ConfigError, KeyPath, Sources, format_key_path, remove_ignored_original_keys, validate_config,
)
from experiment.config.yaml_safety import RefusedYAML, parse_yaml

COMMAND_LINE = "command line"  # the source named for overrides
MAX_CONFIG_BYTES = 4 * 2**20  # a config file is a few kilobytes; more is a mistake (a log, a data file)
MAX_EXPERIMENTS = 10_000  # experiments one command may expand to (customizations × override values)


@dataclass
class _Sourced:
    """A YAML value and the file that set it; mappings and lists hold `_Sourced` children."""

    value: Any
    source: str


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """Adds the `key.path=value ...` positional whose values `load_configs` takes as `overrides`: one
    definition for every command that loads a config (experiment.main and the paper scripts), so a
    paper script given a run's overrides finds the run folder that command wrote. Parse with
    `parse_intermixed_args`, so options may come after the overrides too."""
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a config value (parsed as YAML)")


def load_configs(path: str | os.PathLike, overrides: Sequence[str] = ()) -> list[dict]:
    """Loads a YAML config: includes, customizations expansion (one config per entry, one per
    combination of a `grid` entry; a file without customizations gives one), then `a.b.c=VALUE`
    overrides (VALUE parsed as YAML) applied to every expanded config — an override with
    comma-separated values `a.b.c=V1,V2` makes one config per value, several such overrides one per
    combination — then validation + defaults. Returns fully resolved plain dicts (JSON/YAML-
    serialisable, every key present with its default, `retraining` merged over a copy of `training`),
    customizations outermost, the last override's values innermost. Keys of the original
    framework's configs that mean nothing here (schema.IGNORED_ORIGINAL_KEYS) are dropped, each
    reported once as a 'config warning: FILE: KEY: ...' line on stderr. Raises ConfigError."""
    parsed_overrides = [_parse_override(text) for text in overrides]
    top_file = str(path)
    document = _load_document(Path(path), top_file, ())
    count = _customization_count(document) * math.prod(len(alternatives) for alternatives in parsed_overrides)
    if count > MAX_EXPERIMENTS:
        raise ConfigError(top_file, "customizations" if "customizations" in document.value else "<root>",
                          f"the customizations and command-line values make {count:,} experiments; one command "
                          f"runs at most {MAX_EXPERIMENTS:,} (split the sweep into several configs)")
    override_combinations = list(itertools.product(*parsed_overrides))
    configs = []
    shown_warnings: set[str] = set()  # a key every expanded config inherits is reported once
    for label, customized in _expand_customizations(document):
        for combination in override_combinations:
            variant = copy.deepcopy(customized)
            labels = [label] if label else []
            if any(len(alternatives) > 1 for alternatives in parsed_overrides):
                labels.append(", ".join(override.text for override in combination))
            try:
                for override in combination:
                    _set_at(variant, override.keys, copy.deepcopy(override.value), COMMAND_LINE)
                provenance: dict[KeyPath, str] = {}
                plain = _strip(variant, (), provenance)
                sources = Sources(provenance, top_file)
                for warning in remove_ignored_original_keys(plain, sources):
                    if warning not in shown_warnings:
                        shown_warnings.add(warning)
                        print(f"config warning: {warning}", file=sys.stderr)  # one line, like main's config errors
                configs.append(validate_config(plain, sources))
            except ConfigError as error:
                if not labels:
                    raise
                made_by = "; ".join(labels)
                raise ConfigError(error.file, error.key, f"{error.message} (in the config made by {made_by})") from None
    return configs


def _read_config_text(path: Path, name: str) -> str:
    """The text of config file `path` (shown as `name`): a regular file of UTF-8 text of at most
    MAX_CONFIG_BYTES; anything else (a folder, a FIFO or device that would block or never end, a
    binary file) is a ConfigError saying what it is."""
    where = "" if path.is_absolute() else f" (looked for relative to the working directory {Path.cwd()})"
    try:
        status = path.stat()
    except OSError as error:
        raise ConfigError(name, "<root>", f"cannot read config file: {error.strerror}{where}") from None
    if stat.S_ISDIR(status.st_mode):
        raise ConfigError(name, "<root>", "is a folder, not a config file")
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(name, "<root>", "is not a regular file (a pipe, socket or device); give a YAML file")
    if status.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(name, "<root>", f"is {status.st_size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(name, "<root>", f"cannot read config file: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(name, "<root>", f"is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
                                          "a config file is YAML text") from None


def _load_document(path: Path, name: str, stack: tuple[Path, ...]) -> _Sourced:
    """The mapping in file `path` (shown as `name`) with its includes resolved; `stack` holds the
    files including it, to detect cycles."""
    text = _read_config_text(path, name)
    try:
        data = parse_yaml(text)
    except RefusedYAML as error:
        raise ConfigError(name, error.key, error.message) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(name, "<root>", f"invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        kind = "nothing" if data is None else f"a {type(data).__name__}"
        raise ConfigError(name, "<root>", f"the top level must be a mapping, got {kind}")
    return _resolve_includes(_annotate(data, name), (), (*stack, path.resolve()))


def _annotate(value: Any, source: str) -> _Sourced:
    """`value` as a tree of `_Sourced` nodes, all set by `source`."""
    if isinstance(value, dict):
        return _Sourced({key: _annotate(item, source) for key, item in value.items()}, source)
    if isinstance(value, list):
        return _Sourced([_annotate(item, source) for item in value], source)
    return _Sourced(value, source)


def _resolve_includes(node: _Sourced, key_path: KeyPath, stack: tuple[Path, ...]) -> _Sourced:
    """`node` (at `key_path` in its file) with every `file:` key, at any depth, replaced by the
    included document with the mapping's other keys merged on top."""
    if isinstance(node.value, list):
        items = [_resolve_includes(item, (*key_path, index), stack) for index, item in enumerate(node.value)]
        return _Sourced(items, node.source)
    if not isinstance(node.value, dict):
        return node
    own = {
        key: _resolve_includes(child, (*key_path, key), stack) for key, child in node.value.items() if key != "file"
    }
    mapping = _Sourced(own, node.source)
    if "file" not in node.value:
        return mapping
    include_key = (*key_path, "file")
    included_path, included_name = _find_include(node.value["file"].value, node.source, include_key)
    if included_path.resolve() in stack:
        cycle = " -> ".join([*(str(path) for path in stack), str(included_path.resolve())])
        raise ConfigError(node.source, format_key_path(include_key), f"include cycle: {cycle}")
    return _merge(_load_document(included_path, included_name, stack), mapping)


def _find_include(include: Any, including_file: str, include_key: KeyPath) -> tuple[Path, str]:
    """The file an include names and how to show it: relative to the including file's folder first,
    else relative to the working directory (the original used repository-root-relative paths)."""
    if not isinstance(include, str) or not include:
        raise ConfigError(including_file, format_key_path(include_key), f"expected a file path, got {include!r}")
    candidates = [Path(including_file).parent / include, Path(include)]
    for candidate in candidates:
        if candidate.exists() and not candidate.is_dir():
            return candidate, os.path.normpath(candidate)  # not a regular file: `_read_config_text` says so
    folders = [candidate for candidate in candidates if candidate.is_dir()]
    if folders:
        raise ConfigError(including_file, format_key_path(include_key),
                          f"{os.path.normpath(folders[0])!r} is a folder; an include names a YAML file")
    tried = " and ".join(repr(os.path.normpath(candidate)) for candidate in candidates)
    raise ConfigError(including_file, format_key_path(include_key), f"included file not found (tried {tried})")


def _merge(base: _Sourced, top: _Sourced) -> _Sourced:
    """`top` over `base`: mappings merge recursively, anything else (lists too) is replaced."""
    if not (isinstance(base.value, dict) and isinstance(top.value, dict)):
        return top
    merged = dict(base.value)
    for key, child in top.value.items():
        merged[key] = _merge(merged[key], child) if key in merged else child
    return _Sourced(merged, top.source)


def _customization_count(document: _Sourced) -> int:
    """How many experiments `_expand_customizations` will make of `document`, counted without making
    them (a grid entry: the product of its value lists); entries it will refuse count 1."""
    entries = document.value.get("customizations")
    if entries is None or not isinstance(entries.value, list) or not entries.value:
        return 1
    count = 0
    for entry in entries.value:
        grid = entry.value.get("grid") if isinstance(entry.value, dict) else None
        if grid is not None and isinstance(grid.value, dict):
            count += math.prod(len(values.value) if isinstance(values.value, list) else 1 for values in grid.value.values())
        else:
            count += 1
    return count


def _expand_customizations(document: _Sourced) -> list[tuple[str | None, _Sourced]]:
    """One copy of `document` per `customizations` entry {key: [a, b, c], value: V}, with a.b.c = V,
    and per combination of a `grid` entry {grid: {a.b.c: [V1, V2], d.e: [W1, W2, W3]}} (the product
    of the value lists, the first key outermost), each labelled for error messages
    ('customizations[i]', 'customizations[i] (a.b.c=V1, d.e=W2)'); the document itself (without
    the key, labelled None) when there are no customizations."""
    base = _Sourced({key: child for key, child in document.value.items() if key != "customizations"}, document.source)
    entries = document.value.get("customizations")
    if entries is None or entries.value == []:
        return [(None, base)]
    if not isinstance(entries.value, list):
        raise ConfigError(entries.source, "customizations", "expected a list of {key, value} or {grid} mappings")
    variants = []
    for index, entry in enumerate(entries.value):
        where = format_key_path(("customizations", index))
        if not isinstance(entry.value, dict):
            raise ConfigError(entry.source, where, "expected a mapping {key: [a, b, c], value: V} or {grid: {a.b.c: [V1, V2]}}")
        if "grid" in entry.value:
            settings = _grid(entry, where)
        else:
            settings = [("", [_customization(entry, where)])]
        for suffix, assignments in settings:
            variant = copy.deepcopy(base)
            for keys, value in assignments:
                _set_at(variant, keys, copy.deepcopy(value), entry.source)
            variants.append((where + suffix, variant))
    return variants


def _customization(entry: _Sourced, where: str) -> tuple[list[str], _Sourced]:
    """The key path and value node of one customizations entry {key: [a, b, c], value: V}."""
    unknown = sorted(set(entry.value) - {"key", "value"}, key=str)
    if unknown:
        raise ConfigError(entry.source, f"{where}.{unknown[0]}", "unknown key; expected 'key' and 'value', or 'grid'")
    for required in ("key", "value"):
        if required not in entry.value:
            raise ConfigError(entry.source, f"{where}.{required}", "required key is missing")
    keys = _strip(entry.value["key"], (), {})
    if not isinstance(keys, list) or not keys or not all(isinstance(key, str) and key for key in keys):
        raise ConfigError(entry.source, f"{where}.key", f"expected a non-empty list of key names, got {keys!r}")
    return keys, entry.value["value"]


def _grid(entry: _Sourced, where: str) -> list[tuple[str, list[tuple[list[str], _Sourced]]]]:
    """The combinations of a customizations entry {grid: {a.b.c: [V1, V2], ...}}: per combination a
    label suffix ' (a.b.c=V1, ...)' and its (key path, value node) assignments."""
    extra = sorted(set(entry.value) - {"grid"}, key=str)
    if extra:
        raise ConfigError(entry.source, f"{where}.{extra[0]}", "a grid entry holds only 'grid'")
    grid = entry.value["grid"]
    if not isinstance(grid.value, dict) or not grid.value:
        raise ConfigError(grid.source, f"{where}.grid", "expected a non-empty mapping {key.path: [values]}")
    axes = []
    for dotted, values in grid.value.items():
        keys = dotted.split(".") if isinstance(dotted, str) else []
        if not keys or not all(keys):
            raise ConfigError(grid.source, f"{where}.grid", f"expected dotted key paths such as training.numEpochs, got {dotted!r}")
        if not isinstance(values.value, list) or not values.value:
            raise ConfigError(values.source, f"{where}.grid.{dotted}", "expected a non-empty list of values")
        axes.append([(keys, value) for value in values.value])
    combinations = []
    for assignments in itertools.product(*axes):
        shown = ", ".join(f"{'.'.join(keys)}={_strip(value, (), {})!r}" for keys, value in assignments)
        combinations.append((f" ({shown})", list(assignments)))
    return combinations


@dataclass
class _Override:
    """One value of a command-line override `a.b.c=VALUE` (VALUE parsed as YAML), with its text."""

    keys: list[str]
    value: _Sourced
    text: str


def _parse_override(text: str) -> list[_Override]:
    """`a.b.c=VALUE` as one override, `a.b.c=V1,V2` as one per value (commas inside brackets, braces
    or quotes do not split: `a=[1, 2]` and `a='x,y'` are single values)."""
    dotted, equals, value_text = text.partition("=")
    keys = dotted.strip().split(".")
    if not equals or not all(keys):
        raise ConfigError(COMMAND_LINE, text, "malformed override, expected KEY.PATH=VALUE (e.g. training.numEpochs=2)")
    alternatives = _split_top_level_commas(value_text)
    if len(alternatives) > 1 and not all(piece.strip() for piece in alternatives):
        raise ConfigError(COMMAND_LINE, dotted, f"empty value in the comma-separated list {value_text!r}")
    overrides = []
    for piece in alternatives:
        try:
            value = parse_yaml(piece)
        except RefusedYAML as error:
            raise ConfigError(COMMAND_LINE, dotted, error.message) from None
        except yaml.YAMLError as error:
            raise ConfigError(COMMAND_LINE, dotted, f"cannot parse value {piece!r} as YAML: {error}") from None
        overrides.append(_Override(keys, _annotate(value, COMMAND_LINE), f"{dotted}={piece.strip()}"))
    return overrides


def _split_top_level_commas(text: str) -> list[str]:
    """`text` split at the commas that are outside brackets, braces and quotes."""
    pieces, depth, quote, start = [], 0, None, 0
    for position, character in enumerate(text):
        if quote:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "[{":
            depth += 1
        elif character in "]}":
            depth -= 1
        elif character == "," and depth == 0:
            pieces.append(text[start:position])
            start = position + 1
    pieces.append(text[start:])
    return pieces


def _set_at(document: _Sourced, keys: list[str], value: _Sourced, source: str) -> None:
    """Sets document[a][b][c] = value for keys [a, b, c], creating missing mappings (set by `source`)."""
    node = document
    for depth, key in enumerate(keys[:-1]):
        child = node.value.setdefault(key, _Sourced({}, source))
        if not isinstance(child.value, dict):
            raise ConfigError(
                source, ".".join(keys[: depth + 1]), f"is not a mapping, cannot set {'.'.join(keys)}"
            )
        node = child
    node.value[keys[-1]] = value


def _strip(node: _Sourced, path: KeyPath, provenance: dict[KeyPath, str]) -> Any:
    """The plain value of `node`; records in `provenance` the source of every key path below `path`."""
    provenance[path] = node.source
    if isinstance(node.value, dict):
        return {key: _strip(child, (*path, key), provenance) for key, child in node.value.items()}
    if isinstance(node.value, list):
        return [_strip(child, (*path, index), provenance) for index, child in enumerate(node.value)]
    return node.value
