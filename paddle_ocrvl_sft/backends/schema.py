"""Trainer config keys as data: one :class:`KeySchema` per trainer, checked before anything launches.

Both trainers read a YAML dict into dataclasses (PaddleFormers' ``PdArgumentParser.parse_dict``)
without converting types: PyYAML reads ``1e-5`` as the *string* '1e-5'. ERNIEKit also drops
unknown keys silently (a typo is a no-op); PaddleFormers 1.x refuses them, but only after start-up.
A :class:`KeySchema` closes those holes up front: every key a plan writes is in the trainer's
table, every value is type-checked, overrides are typed like the trainers' own ``key=value``
parsing, and :meth:`KeySchema.dump_yaml` writes floats PyYAML reads back as floats.

The tables themselves live beside each backend (``backends/erniekit.py``,
``backends/paddleformers.py``): rows of :class:`Key`, a section layout, and the values a run needs.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import read_text

STR, INT, FLOAT, NUMBER, BOOL, STR_LIST = "str", "int", "float", "number", "bool", "list[str]"
TYPES = (STR, INT, FLOAT, NUMBER, BOOL, STR_LIST)
UNSET = None  # the trainer's ``None`` default: the key may be left out


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: Any  # the trainer's default when the key is left out
    source: str
    meaning: str
    required: bool = False  # plan always writes it; a config without it is rejected
    danger: str = ""  # what goes wrong with the trainer's default or a wrong value
    choices: tuple = ()
    ignored: str = ""  # non-empty: the trainer does not read this key (why)
    no_effect: str = ""  # non-empty: read, but setting it changes nothing for this trainer/plan (why): refused as an override
    use_instead: str = ""  # the key the trainer reads for this setting: an override is moved there, with a note


_COMMENTED = re.compile(r"^# (\w+): (.*)$")


@dataclass(frozen=True)
class KeySchema:
    """A trainer's keys, the layout its YAML is written in, and the values a run needs.

    ``layout``: section comments and key names, one per line, in the order the YAML is written;
    ``# key: value`` lines are keys shown commented out while unset. ``rules``: checks across
    keys that the rows cannot express (each returns problem messages).
    """

    trainer: str
    keys: tuple[Key, ...]
    layout: str
    required_values: dict[str, Any] = field(default_factory=dict)
    positive_ints: tuple[str, ...] = ()
    rules: tuple[Callable[[dict], list[str]], ...] = ()
    unknown: str = ""  # what the trainer itself does with a key it does not know

    def __post_init__(self):
        by_name = {k.name: k for k in self.keys}
        if len(by_name) != len(self.keys):
            raise ValueError(f"{self.trainer}: duplicate key rows")
        object.__setattr__(self, "by_name", by_name)

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def __getitem__(self, name: str) -> Key:
        return self.by_name[name]

    # --- checking ---------------------------------------------------------------------------

    def did_you_mean(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.by_name, n=3, cutoff=0.6)
        return f" (did you mean {' or '.join(close)}?)" if close else ""

    def unknown_key_message(self, name: str) -> str:
        return f"unknown {self.trainer} key {name!r}{self.did_you_mean(name)}" + (f": {self.unknown}" if self.unknown else "")

    def _with_danger(self, name: str, message: str) -> str:
        danger = self.by_name[name].danger
        return f"{message} ({danger})" if danger else message

    def problems(self, config: dict) -> list[str]:
        """Every problem of a config dict, one message per key (empty: the config is good)."""
        problems = []
        for name, value in config.items():
            key = self.by_name.get(name)
            if key is None:
                problems.append(self.unknown_key_message(name))
            elif key.ignored:
                problems.append(f"{name}: {self.trainer} does not read this key ({key.ignored}); remove it")
            elif value is None:
                continue  # left to the trainer's default, as if absent
            elif not type_ok(key.type, value):
                problems.append(f"{name}: expected {key.type}, got {type(value).__name__} {value!r}" + _type_hint(key, value))
            elif key.choices and value not in key.choices:
                problems.append(self._with_danger(name, f"{name}: {value!r} is not one of {', '.join(map(repr, key.choices))}"))
        for key in self.keys:
            if key.required and config.get(key.name) is None:
                problems.append(self._with_danger(key.name, f"{key.name}: required for {self.trainer}"))
        for name, want in self.required_values.items():
            have = config.get(name)
            if have is not None and type_ok(self.by_name[name].type, have) and have != want:
                problems.append(self._with_danger(name, f"{name}: must be {want!r} for {self.trainer}, got {have!r}"))
        for name in self.positive_ints:
            value = config.get(name)
            if type_ok(INT, value) and value <= 0:
                problems.append(self._with_danger(name, f"{name}: must be > 0, got {value}"))
        lr = config.get("learning_rate")
        if type_ok(FLOAT, lr) and not (lr > 0 and math.isfinite(lr)):
            problems.append(f"learning_rate: must be a positive number, got {lr!r}")
        for rule in self.rules:
            problems += rule(config)
        return problems

    def validate(self, config: dict, where: str = "config") -> dict:
        """Raise :class:`UserError` listing every problem; return the config unchanged when clean."""
        problems = self.problems(config)
        if problems:
            raise UserError(f"{where}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        return config

    # --- key=value overrides ------------------------------------------------------------------

    def parse_override(self, item: str) -> tuple[str, Any]:
        """``key=value`` -> (key, typed value), typed by the schema.

        As the trainers' OmegaConf CLI does, the value is read as YAML (``1e-5`` is a float,
        ``True`` a bool, ``[a, b]`` a list; an empty value means "unset"). Stricter: a str key keeps
        the raw text (``train_dataset_prob=1.0`` stays '1.0', which the trainers split on commas),
        an int for a float key becomes a float, anything else of the wrong type is an error.
        """
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        name, text = (s.strip() for s in item.split("=", 1))
        key = self.by_name.get(name)
        if key is None:
            raise UserError(f"override {item!r}: {self.unknown_key_message(name)}")
        if key.ignored:
            raise UserError(f"override {item!r}: {self.trainer} does not read {name} ({key.ignored})")
        if text == "":
            return name, None
        try:
            value = text if key.type == STR else yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"override {item!r}: {name}: not a valid value for {key.type}") from None
        if isinstance(value, str) and key.type in (FLOAT, NUMBER) and _looks_like_float(value):
            value = float(value)
        if key.type == FLOAT and type_ok(INT, value):
            value = float(value)
        if not type_ok(key.type, value):
            raise UserError(f"override {item!r}: {name}: expected {key.type}, got {value!r}")
        if key.choices and value not in key.choices:
            raise UserError(f"override {item!r}: {name}: {value!r} is not one of {', '.join(map(repr, key.choices))}")
        return name, value

    def effective_overrides(self, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Overrides as the trainer will read them, with a note for each one moved.

        A key the trainer does not read for this setting is moved to the key it does read
        (ERNIEKit's ``lr_scheduler_type`` -> ``lr_scheduler``); a key whose setting changes
        nothing (its ``no_effect``) is refused with why. Every such key is refused or moved,
        never written silently.
        """
        out, notes, refused = {}, [], []
        for name, value in overrides.items():
            key = self.by_name[name]
            if key.use_instead:
                target = self.by_name[key.use_instead]
                if value is not None and not (type_ok(target.type, value) and (not target.choices or value in target.choices)):
                    refused.append(f"{name}={value}: {self.trainer} reads {target.name} for this ({key.no_effect}), and "
                                   f"{value!r} is not one of its values: {', '.join(map(repr, target.choices))}")
                    continue
                out[target.name] = value
                notes.append(f"{name}={value} set as {target.name}={value}: {self.trainer} does not read {name} "
                             f"({key.no_effect})")
            elif key.no_effect:
                refused.append(f"{name}: setting it changes nothing for {self.trainer} ({key.no_effect})")
            else:
                out[name] = value
        if refused:
            raise UserError("\n".join(refused))
        return out, notes

    def parse_overrides(self, items: Iterable[str]) -> dict[str, Any]:
        """All overrides at once; every bad one is reported, not just the first."""
        out, errors = {}, []
        for item in items:
            try:
                name, value = self.parse_override(item)
            except UserError as exc:
                errors.append(str(exc))
                continue
            out[name] = value
        if errors:
            raise UserError("\n".join(errors))
        return out

    # --- YAML out ---------------------------------------------------------------------------

    def layout_keys(self) -> tuple[str, ...]:
        names = []
        for line in self.layout.splitlines():
            m = _COMMENTED.match(line)
            if m and m.group(1) in self.by_name:
                names.append(m.group(1))
            elif line and not line.startswith("#"):
                names.append(line)
        return tuple(names)

    def dump_yaml(self, config: dict, header: str = "") -> str:
        """The config as YAML in the layout's order and sections; checked to round-trip.

        Keys set to ``None`` are left out (the trainer's default). Keys the layout shows commented
        out stay commented while unset. Keys outside the layout go in a last section.
        """
        values = {k: v for k, v in config.items() if v is not None}
        lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
        for line in self.layout.splitlines():
            m = _COMMENTED.match(line)
            name = m.group(1) if m and m.group(1) in self.by_name else (line if line and not line.startswith("#") else None)
            if name is None:
                lines.append(line)
            elif name in values:
                lines += _format_entry(name, values[name])
            elif m:
                lines.append(line)
        extra = [k for k in values if k not in self.layout_keys()]
        if extra:
            lines += ["", "# more keys"]
            for name in extra:
                lines += _format_entry(name, values[name])
        text = "\n".join(lines) + "\n"
        if yaml.safe_load(text) != values:  # a bug here would mean the trainer reads other values
            raise AssertionError("internal error: the written YAML does not load back to the same config")
        return text

    def markdown(self) -> str:
        """The key table for the docs (generated, so the doc cannot drift from the schema)."""
        rows = [
            f"| key | type | {self.trainer} default | required | meaning | watch out | source |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in self.keys:
            default = "—" if k.default is None else f"`{format_scalar(k.default)}`"
            note = k.danger or (f"{self.trainer} ignores it: {k.ignored}" if k.ignored else "")
            if k.use_instead:
                note = f"{note}; an override is set as `{k.use_instead}`" if note else f"an override is set as `{k.use_instead}`"
            elif k.no_effect:
                note = f"{note}; refused as an override: {k.no_effect}" if note else f"refused as an override: {k.no_effect}"
            cells = [f"`{k.name}`", k.type, default, "yes" if k.required else "", k.meaning, note, k.source]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(rows) + "\n"


# --- types --------------------------------------------------------------------------------


def type_ok(kind: str, value: Any) -> bool:
    """Whether ``value`` (as PyYAML loaded it) has the Python type the trainer's field expects."""
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (FLOAT, NUMBER):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    if kind == STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise ValueError(f"unknown schema type {kind!r}")


def _type_hint(key: Key, value: Any) -> str:
    if key.type in (FLOAT, NUMBER) and isinstance(value, str) and _looks_like_float(value):
        return " (PyYAML reads exponents without a dot as strings: write e.g. 5.0e-06)"
    if key.type == STR and not isinstance(value, str):
        return " (quote it: the trainer uses it as a string)"
    return ""


# PyYAML (YAML 1.1) reads 1e-5 as a string; OmegaConf, which parses the trainers' CLI overrides,
# adds exponent floats without a dot. This pattern accepts what OmegaConf accepts there.
_EXP_FLOAT = re.compile(r"^[-+]?(\d[\d_]*)?\.?\d*[eE][-+]?\d+$")


def _looks_like_float(text: str) -> bool:
    return bool(_EXP_FLOAT.match(text.strip()))


def apply_overrides(config: dict, overrides: dict[str, Any]) -> dict:
    """A new config with overrides applied; ``None`` removes the key (the trainer's default)."""
    merged = dict(config)
    for name, value in overrides.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def dataset_list_problems(config: dict) -> list[str]:
    """``train_dataset_path/prob/type``: comma-separated lists of the same length (both trainers)."""
    problems = []
    paths, probs, types = (config.get(k) for k in ("train_dataset_path", "train_dataset_prob", "train_dataset_type"))
    if not all(isinstance(v, str) for v in (paths, probs, types)):
        return problems
    n = len(paths.split(","))
    if len(probs.split(",")) != n:
        problems.append(f"train_dataset_prob: {len(probs.split(','))} weight(s) for {n} train_dataset_path file(s)")
    else:
        try:
            weights = [float(p) for p in probs.split(",")]
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                problems.append(f"train_dataset_prob: weights must be >= 0 with a positive sum, got {probs!r}")
        except ValueError:
            problems.append(f"train_dataset_prob: not a comma-separated list of numbers: {probs!r}")
    if len(types.split(",")) != n:
        problems.append(f"train_dataset_type: {len(types.split(','))} type(s) for {n} train_dataset_path file(s)")
    return problems


# --- YAML scalars ---------------------------------------------------------------------------


def number_or_int(value: float) -> int | float:
    """A whole number as an int (``2`` rather than ``2.0`` in the YAML and the plan record)."""
    return int(value) if float(value).is_integer() else float(value)


def format_float(value: float) -> str:
    """A float PyYAML's safe_load reads back as the same float: ``5e-06`` -> ``5.0e-06``.

    YAML 1.1 (PyYAML) needs a dot in the mantissa and a signed exponent; ``repr`` gives the
    shortest text that round-trips exactly, so only those two details are patched.
    """
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(float(value))
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{int(exponent):+03d}"


def format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        plain = value and value == value.strip() and not any(c in value for c in "#:'\"{}[],&*!|>%@`\n\t\\")
        if plain:
            try:
                plain = yaml.safe_load(value) == value
            except yaml.YAMLError:
                plain = False
        if plain:
            return value
        return yaml.safe_dump(value, default_style='"', allow_unicode=True, width=math.inf).rstrip("\n")
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to a trainer YAML")


def _format_entry(name: str, value: Any) -> list[str]:
    if isinstance(value, list):
        return [f"{name}:"] + [f"  - {format_scalar(v)}" for v in value]
    return [f"{name}: {format_scalar(value)}"]


def load_yaml_config(path) -> dict:
    """Read a trainer YAML exactly as the trainers do (``yaml.safe_load``); errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of trainer keys")
    return data
