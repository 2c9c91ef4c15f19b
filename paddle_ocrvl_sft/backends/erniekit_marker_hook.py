"""ERNIEKit v1.4 trains PaddleOCR-VL-1.5/1.6 with ITS release's assistant marker: a version-checked fix.

Why: ERNIEKit's data pipeline writes the end of the user turn itself, hard-coded to the first
release's ``"\\nAssistant: "`` (``data_processor/steps/input_ids_messaging/chat_template_utils.py``,
``apply_chat_training_template``), whatever the model. PaddleOCR-VL-1.5 and 1.6 are prompted with
``"\\nAssistant:\\n"`` (their chat_template.jinja): trained unchanged, the model learns one prompt
and is asked with another. The fix replaces exactly that string literal with the plan's marker.

How: a plan for 1.5/1.6 copies this file to ``PLAN_DIR/trainer_hooks/sitecustomize.py`` (beside a
``erniekit_markers.json`` naming the release and marker) and puts that dir on ``PYTHONPATH`` in
the launch environment, so every Python the run starts — `erniekit train`'s launcher, each GPU
worker it spawns, the CPU path, the agreement check's probe — imports it at start-up. It installs
an import hook: when ERNIEKit's module is imported, the function's source is hashed (SHA-256 of
the exact upstream text this fix was written for, develop@41ab1c5 ≈ release/v1.4) and, only if it
matches, recompiled with the one literal replaced. Another ERNIEKit version is REFUSED (the import
fails with the reason) rather than patched blindly. A ``sitecustomize`` this one shadows is run
after it. Standard library only: it runs before anything else in the trainer's environment.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import json
import os
import sys
import textwrap

TARGET_MODULE = "data_processor.steps.input_ids_messaging.chat_template_utils"
TARGET_FUNCTION = "apply_chat_training_template"
SOURCE_SHA256 = "59916f4e903f5f6eecba99fb4eafb15e9728c14fc02272c67ff848e04052ebd6"
V1_LITERAL = '"\\nAssistant: "'  # as written in the source (a backslash and an n)
SETTINGS = "erniekit_markers.json"
FLAG = "PADDLE_OCRVL_SFT_FIX"  # set on the fixed module: what was applied


class FixRefused(RuntimeError):
    """The installed ERNIEKit is not the version this fix was written for (not an ImportError: an
    ``except ImportError`` around the import must not swallow the refusal)."""


def fixed_source(source: str, marker: str) -> str:
    """The function's source with the v1 literal replaced by ``marker``; refuses unknown source."""
    found = hashlib.sha256(source.encode("utf-8")).hexdigest()
    if found != SOURCE_SHA256:
        raise FixRefused(
            f"paddle-ocrvl-sft: the assistant-marker fix for {TARGET_MODULE}.{TARGET_FUNCTION} was written for "
            f"ERNIEKit develop@41ab1c5 / release/v1.4 (source sha256 {SOURCE_SHA256[:16]}…), this ERNIEKit has "
            f"{found[:16]}…. Refusing to patch unknown code: install the pinned ERNIEKit "
            "(`python -m paddle_ocrvl_sft backend install erniekit`) or train with --backend paddleformers.")
    if source.count(V1_LITERAL) != 1:
        raise FixRefused(f"paddle-ocrvl-sft: {V1_LITERAL} is not in {TARGET_FUNCTION} exactly once")
    return source.replace(V1_LITERAL, json.dumps(marker))


def apply(module, marker: str, release: str) -> None:
    """Recompile the module's function from its checked source with the release's marker."""
    function = getattr(module, TARGET_FUNCTION)
    source = textwrap.dedent(fixed_source(inspect.getsource(function), marker))
    namespace: dict = {}
    exec(compile(source, f"<paddle-ocrvl-sft fixed {TARGET_MODULE}>", "exec"), module.__dict__, namespace)  # noqa: S102
    setattr(module, TARGET_FUNCTION, namespace[TARGET_FUNCTION])
    setattr(module, FLAG, f"{release}: user turn ends with {marker!r} instead of ERNIEKit's '\\nAssistant: '")
    print(f"[paddle-ocrvl-sft] ERNIEKit assistant-marker fix applied in process {os.getpid()}: {getattr(module, FLAG)}",
          file=sys.stderr, flush=True)  # in every worker's log: the fix reached it


class _FixingLoader(importlib.abc.Loader):
    def __init__(self, inner, marker: str, release: str):
        self.inner, self.marker, self.release = inner, marker, release

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        apply(module, self.marker, self.release)

    def __getattr__(self, name):  # get_source, get_filename, ...: the file loader's own
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, marker: str, release: str):
        self.marker, self.release = marker, release

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _FixingLoader(spec.loader, self.marker, self.release)
        return spec


def install(settings_path: str) -> None:
    with open(settings_path, encoding="utf-8") as fh:
        settings = json.load(fh)
    sys.meta_path.insert(0, _Finder(settings["assistant_marker"], settings["release"]))


def _chain_next_sitecustomize(here: str) -> None:
    """Run the ``sitecustomize`` this file shadows on sys.path (a distribution's, a venv's), if any."""
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    _here = os.path.dirname(os.path.abspath(__file__))
    install(os.path.join(_here, SETTINGS))
    _chain_next_sitecustomize(_here)
