"""Composites: TOML files mapping nodes to rules; first match wins. Loading, validation and rule assignment."""
from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import CompositeError, RuleParameterError
from .rules import RULES, Rule, build_rule, rule_parameters

GROUPS = ("dense", "convolution", "linear", "batchnorm", "affine", "activation", "sum", "avgpool", "maxpool",
          "shape", "product", "normalization", "softmax")
GROUP_MEMBERS = {"linear": {"dense", "convolution", "batchnorm", "linear"}}
SELECTORS = ("op", "group", "name", "name_regex", "position")
ENTRY_KEYS = set(SELECTORS) | {"rule"}
TOP_KEYS = {"description", "extends", "params", "match"}
MAX_COMPOSITE_BYTES = 1024 * 1024  # a composite is a few KB of TOML; a larger file is refused before it is parsed


@dataclass(frozen=True)
class Entry:
    """One match entry: selectors, a rule name, and the rule's arguments (numbers or '$param' references)."""

    source: str
    index: int
    ops: tuple = ()
    groups: tuple = ()
    names: tuple = ()
    name_regex: Optional[str] = None
    position: Optional[str] = None
    rule: str = "pass"
    args: tuple = ()

    def where(self) -> str:
        """'file, entry k' for error messages."""
        return f"{self.source}, [[match]] entry {self.index + 1}"

    def references(self) -> list:
        """Names of the [params] entries this entry's arguments refer to ('$name')."""
        return [v[1:] for _, v in self.args if isinstance(v, str) and v.startswith("$")]

    def selects(self, op_type: str, group: str, name: str) -> bool:
        """True if op type, group and name satisfy every selector but position."""
        if self.ops and op_type not in self.ops:
            return False
        if self.groups and not any(group in GROUP_MEMBERS.get(g, {g}) for g in self.groups):
            return False
        if self.names and name not in self.names:
            return False
        if self.name_regex and not re.search(self.name_regex, name):
            return False
        return True


@dataclass
class Composite:
    """A loaded composite: ordered entries and parameter defaults."""

    name: str
    description: str
    entries: list
    params: dict
    source: str
    parents: list = field(default_factory=list)

    def with_params(self, overrides: Optional[dict]) -> "Composite":
        """A copy with parameter overrides; an unknown parameter is an error naming the ones that exist."""
        params = dict(self.params)
        for key, value in (overrides or {}).items():
            if key not in params:
                raise CompositeError(
                    f"composite {self.name!r} has no parameter {key!r} (it has: {', '.join(sorted(params)) or 'none'})")
            params[key] = parse_value(value, key)
        composite = Composite(self.name, self.description, self.entries, params, self.source, self.parents)
        for entry in composite.entries:  # validate every entry with the new values; blame the value given, not the file
            given = [k for k in entry.references() if k in (overrides or {})]
            if given:
                try:
                    build_rule(entry.rule, composite.resolved_args(entry))
                except RuleParameterError as exc:
                    key = given[0]
                    raise RuleParameterError(f"parameter {key}={_text(params[key])} of composite {self.name!r}: "
                                             f"{exc}") from None
        composite.rules_for_entries()
        return composite

    def rules_for_entries(self) -> list:
        """Instantiate the rule of every entry with the current parameters (validates them)."""
        return [self.rule_of(e) for e in self.entries]

    def resolved_args(self, entry: Entry) -> dict:
        """An entry's rule arguments with its '$param' references replaced by the parameters' values."""
        args = {}
        for key, value in entry.args:
            if isinstance(value, str) and value.startswith("$"):
                ref = value[1:]
                if ref not in self.params:
                    raise CompositeError(f"{entry.where()}: unknown parameter reference {value!r}")
                value = self.params[ref]
            args[key] = value
        return args

    def rule_of(self, entry: Entry) -> Rule:
        """The rule an entry assigns, its '$param' references resolved."""
        args = self.resolved_args(entry)
        try:
            return build_rule(entry.rule, args)
        except RuleParameterError as exc:
            raise RuleParameterError(f"{entry.where()}: {exc}") from None

    def assign(self, nodes: Iterable[tuple]) -> dict:
        """Map node name -> (Rule, Entry) for (op_type, group, name) triples in topological order; first match wins.

        A node no entry matches is absent from the result (the compiler reports it)."""
        nodes = list(nodes)
        firsts: dict = {}
        for entry in self.entries:
            if entry.position == "first":
                firsts[entry] = next((n for _, _, n in (x for x in nodes if entry.selects(*x))), None)
        plan = {}
        for op_type, group, name in nodes:
            for entry in self.entries:
                if entry.position == "first" and firsts.get(entry) != name:
                    continue
                if entry.selects(op_type, group, name):
                    plan[name] = (self.rule_of(entry), entry)
                    break
        return plan


def parse_value(value, key: Optional[str] = None):
    """A parameter value: numbers stay numbers; strings like '0.5' or '[1,2,3]' are parsed; a list must be a flat
    list of numbers. key names the parameter in the error message (a huge value is shown cut short)."""
    problem = (f"parameter {key}={_short(value)}: not a number or a list of numbers" if key else
               f"parameter value {_short(value if not isinstance(value, str) else repr(value))} is not a number or "
               f"a list of numbers")

    def number(item) -> float:
        if isinstance(item, str):
            try:
                return float(item.strip())
            except ValueError:
                pass
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            try:
                return float(item)
            except OverflowError:  # an int beyond float's range
                pass
        raise CompositeError(problem)

    if isinstance(value, str) and value.strip().startswith("["):
        return [number(v) for v in value.strip().strip("[]").split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [number(v) for v in value]
    return number(value)


def _short(value) -> str:
    """repr of a value (str() for strings given on the command line), cut to 80 characters: a 5,000-digit number
    or a huge list stays one short line."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value) -> str:
    """A parameter value as written on the command line: 0.01, -1, [0.1,0.2]."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def builtin_dir() -> Path:
    """The folder holding the built-in composites (the top-level rules/ folder, shipped in the wheel)."""
    from .data import data_folder
    return data_folder("onnxlrp._rules", "base.toml") or Path(__file__).resolve().parent.parent / "rules"


SHARED_COMPOSITES = ("base",)  # what the built-in composites extend; explains nothing on its own


def builtin_names(shared: bool = True) -> list:
    """Names of the built-in composites (shared=False: without `base`, which only others extend)."""
    return sorted(p.stem for p in builtin_dir().glob("*.toml") if shared or p.stem not in SHARED_COMPOSITES)


def resolve_path(spec: Union[str, Path]) -> Path:
    """A composite spec (built-in name, with '-' or '_', or a path to a TOML file) -> its file."""
    text = str(spec)
    candidate = Path(text)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise CompositeError(f"composite file not found: {candidate}")
        return candidate
    name = text.replace("-", "_")
    path = builtin_dir() / f"{name}.toml"
    if not path.is_file():
        names = builtin_names(shared=False)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CompositeError(f"unknown composite {text!r} ({hint}built-in: {', '.join(names)}; or a path to a .toml)")
    return path


def load_composite(spec: Union[str, Path, Composite], params: Optional[dict] = None) -> Composite:
    """Load and validate a composite by name or path, apply parameter overrides."""
    composite = spec if isinstance(spec, Composite) else _load(resolve_path(spec), ())
    return composite.with_params(params)


def _load(path: Path, seen: tuple) -> Composite:
    """Parse one TOML composite (and, recursively, the one it extends)."""
    source = path.name
    if path.resolve() in seen:
        raise CompositeError(f"{source}: 'extends' forms a cycle")
    try:
        if path.stat().st_size > MAX_COMPOSITE_BYTES:
            raise CompositeError(f"{source}: {path.stat().st_size} bytes is too large for a composite (at most "
                                 f"{MAX_COMPOSITE_BYTES // 1024} KB)")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CompositeError(f"{source}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise CompositeError(f"{source}: not valid UTF-8 (byte {exc.start}); TOML files are UTF-8 text") from None
    except RecursionError:
        raise CompositeError(f"{source}: not valid TOML (arrays or tables nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit conversion limit
        raise CompositeError(f"{source}: not valid TOML ({' '.join(str(exc).split(';')[0].split())[:120]})") from None
    except OSError as exc:
        raise CompositeError(f"cannot read composite {path}: {exc.strerror}") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise CompositeError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(TOP_KEYS))})")
    parent = None
    if "extends" in data:
        if not isinstance(data["extends"], str):
            raise CompositeError(f"{source}: 'extends' must be a composite name or path")
        parent_spec = data["extends"]
        parent_path = (path.parent / parent_spec) if parent_spec.endswith(".toml") else resolve_path(parent_spec)
        parent = _load(parent_path, seen + (path.resolve(),))
    params = dict(parent.params) if parent else {}
    raw_params = data.get("params", {})
    if not isinstance(raw_params, dict):
        raise CompositeError(f"{source}: [params] must be a table")
    for key, value in raw_params.items():
        try:
            params[key] = parse_value(value)
        except CompositeError as exc:
            raise CompositeError(f"{source}, [params] {key}: {exc}") from None
    raw_entries = data.get("match", [])
    if not isinstance(raw_entries, list):
        raise CompositeError(f"{source}: 'match' must be an array of tables ([[match]])")
    entries = [_entry(source, i, raw) for i, raw in enumerate(raw_entries)]
    if parent:
        entries = entries + parent.entries
    composite = Composite(path.stem, str(data.get("description", "")), entries, params, source,
                          ([parent.name] + parent.parents) if parent else [])
    composite.rules_for_entries()
    return composite


def _as_tuple(value, what: str, where: str) -> tuple:
    """A selector value as a tuple of strings."""
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise CompositeError(f"{where}: '{what}' must be a string or a list of strings")
    return tuple(values)


def _entry(source: str, index: int, raw) -> Entry:
    """Validate one [[match]] table into an Entry."""
    where = f"{source}, [[match]] entry {index + 1}"
    if not isinstance(raw, dict):
        raise CompositeError(f"{where}: must be a table")
    if "rule" not in raw:
        raise CompositeError(f"{where}: no 'rule' given")
    rule = raw["rule"]
    if rule not in RULES:
        raise CompositeError(f"{where}: unknown rule {rule!r} (known: {', '.join(sorted(RULES))})")
    allowed_args = set(rule_parameters(RULES[rule]))
    for key in raw:
        if key not in ENTRY_KEYS and key not in allowed_args:
            hint = f"; rule {rule!r} takes: {', '.join(sorted(allowed_args)) or 'no parameters'}"
            raise CompositeError(f"{where}: unknown key {key!r} (selectors: {', '.join(SELECTORS)}{hint})")
    if not any(k in raw for k in SELECTORS):
        raise CompositeError(f"{where}: no selector (give one of {', '.join(SELECTORS)})")
    groups = _as_tuple(raw.get("group", []), "group", where)
    for g in groups:
        if g not in GROUPS:
            raise CompositeError(f"{where}: unknown group {g!r} (known: {', '.join(GROUPS)})")
    position = raw.get("position")
    if position is not None and position != "first":
        raise CompositeError(f"{where}: position must be \"first\", got {position!r}")
    regex = raw.get("name_regex")
    if regex is not None:
        try:
            re.compile(regex)
        except (re.error, TypeError) as exc:
            raise CompositeError(f"{where}: invalid name_regex {regex!r} ({exc})") from None
    args = tuple((k, v) for k, v in raw.items() if k in allowed_args)
    return Entry(source, index, _as_tuple(raw.get("op", []), "op", where), groups,
                 _as_tuple(raw.get("name", []), "name", where), regex, position, rule, args)
