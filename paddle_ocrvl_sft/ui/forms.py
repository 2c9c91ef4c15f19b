"""A command's form, generated from its own argparse definition, and the form's values back to argv.

The plan page is built from ``commands/plan.py``'s parser, so an option added there shows up in
the UI without a change here; the values are turned into the command line a user would type and
parsed by that same parser, so a usage error reads as it does on the command line.

Every value that names a server path is checked against the UI's roots: an option whose metavar
names a file or directory (``TRAIN.jsonl``, ``BASE_DIR``, ``PLAN_DIR``...) is a path (outputs:
inside the workdir), and any other value that could be one (it holds a ``/`` or starts with ``.``
or ``~``) is checked as a path too. A positional value may not start with ``-``: argparse would
read it as an option (``--output-dir /elsewhere``), which no check above would see.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex

from paddle_ocrvl_sft.ui.paths import Roots

WRITE_DESTS = {"out", "output_dir", "output", "out_prefix", "write_clean", "plot", "crop_dir"}  # where a command writes
WRITE_METAVAR = re.compile(r"^(OUT|PLAN_DIR|PREFIX|PNG)")
PATH_METAVAR = re.compile(r"(\.jsonl|\.json|\.ya?ml|\.png|DIR|FILE|PATH|^IN$|ANNOTATIONS|PAGES)", re.I)
LOOKS_LIKE_PATH = re.compile(r"[/\\]|^[.~]|\.(jsonl?|ya?ml|png|jpe?g)$", re.I)
TYPES = {"int": "int", "positive_int": "int", "float": "float", "positive_seconds": "float"}


class FormError(Exception):
    """A value the command's parser refuses: argparse's own message."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):
        raise FormError(message)

    def exit(self, status=0, message=None):
        raise FormError((message or "").strip() or f"the parser exited with status {status}")


def command_parser(*names: str) -> argparse.ArgumentParser:
    """The parser of ``paddle-ocrvl-sft NAME [SUBNAME]`` as its module registers it (errors raise)."""
    root = _RaisingParser(prog="paddle-ocrvl-sft")
    sub = root.add_subparsers(dest="command")
    importlib.import_module(f"paddle_ocrvl_sft.commands.{names[0]}").register(sub)
    parser = sub.choices[names[0]]
    for name in names[1:]:
        nested = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = nested.choices[name]
    return parser


def _actions(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction,
                                                             argparse._VersionAction))]


def path_kind(action: argparse.Action) -> str | None:
    """``"write"``, ``"read"`` or None: whether an option's value names a server path (and which way)."""
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if action.dest in WRITE_DESTS or WRITE_METAVAR.match(metavar):
        return "write"
    return "read" if metavar and PATH_METAVAR.search(metavar) else None


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    try:
        return text % {"default": action.default, "prog": "paddle-ocrvl-sft"} if "%(" in text else text
    except (KeyError, TypeError, ValueError):
        return text


def fields(parser: argparse.ArgumentParser) -> list[dict]:
    """One field per option, in the parser's order: what the page needs to draw and check it."""
    groups = {id(a): g.title for g in parser._action_groups for a in g._group_actions}
    out = []
    for action in _actions(parser):
        flag = max(action.option_strings, key=len) if action.option_strings else None
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind = "flag"
        elif action.choices:
            kind = "choice"
        else:
            kind = TYPES.get(getattr(action.type, "__name__", ""), "text")
        repeat = isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")
        default = action.default if isinstance(action.default, (str, int, float, bool, type(None))) else None
        out.append({
            "dest": action.dest, "flag": flag, "positional": not action.option_strings, "kind": kind,
            "repeat": repeat, "choices": list(action.choices or []),
            # argparse marks a nargs="*" positional required although it takes nothing
            "required": bool(action.required) and not (not action.option_strings and action.nargs in ("*", "?")),
            "default": default, "metavar": action.metavar if isinstance(action.metavar, str) else None,
            "help": _help(action), "path": path_kind(action), "group": groups.get(id(action)),
        })
    return out


def _values_of(field: dict, value) -> list[str]:
    if value is None or value is False or value == "" or value == []:
        return []
    if field["kind"] == "flag":
        return []
    items = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def to_argv(parser: argparse.ArgumentParser, values: dict, roots: Roots | None = None) -> list[str]:
    """The command line for ``values`` ({dest: value}); server paths checked (and made absolute)."""
    unknown = set(values) - {a.dest for a in _actions(parser)}
    if unknown:
        raise FormError(f"unknown field(s): {', '.join(sorted(unknown))}")
    options, positionals = [], []
    for field, action in zip(fields(parser), _actions(parser)):
        value = values.get(field["dest"])
        if field["kind"] == "flag":
            if value is True or value in ("true", "on", "1"):
                options.append(field["flag"])
            continue
        items = _values_of(field, value)
        if field["positional"]:
            for item in items:  # placed after the options, "--force" or "--docker" here would parse as those options
                if item.startswith("-"):
                    raise FormError(f"{field['metavar'] or field['dest']}: {item!r} starts with '-' (an option has "
                                    "its own field; a value here may not be read as one)")
            positionals += [_checked(field, item, roots) for item in items]
        else:
            for item in items:
                options += [field["flag"], _checked(field, item, roots)]
    return options + positionals


def _checked(field: dict, value: str, roots: Roots | None) -> str:
    """A path field's value made absolute once checked; any other value that could name a path only checked."""
    if roots is None:
        return value
    name = field["flag"] or field["metavar"] or field["dest"]
    if field["path"]:
        return str(roots.resolve(value, write=field["path"] == "write", what=name))
    key, sep, rest = value.partition("=")
    if field["positional"] and sep:  # KEY=VALUE: a trainer key may name where the trainer writes
        if LOOKS_LIKE_PATH.search(rest):
            roots.resolve(rest, write=True, what=f"{key}=")
    elif LOOKS_LIKE_PATH.search(value):
        roots.resolve(value, what=name)
    return value


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the command's own parser (usage errors raise :class:`FormError`)."""
    return parser.parse_args(argv)


def command_line(names: tuple[str, ...], argv: list[str]) -> str:
    return shlex.join(["python", "-m", "paddle_ocrvl_sft", *names, *argv])

