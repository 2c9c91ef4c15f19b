"""Compatibility patches that let a trainer run a TINY PaddleOCR-VL on a CPU, applied in memory.

``python -m paddle_ocrvl_sft.backends.cpu.<backend> train CONFIG`` runs in the trainer's own
environment (``train --device cpu`` starts it): it applies that backend's patches to the imported
modules of THIS process and then runs the trainer's launcher in-process. Nothing on disk changes,
and nothing here runs on a GPU. Each :class:`Patch` names the upstream error it works around
(shared/reference/CPU_TRAINING.md) and the SHA-256 of the exact upstream source it was written
for: when the installed trainer differs, the run is refused before anything is patched.

Only the standard library is imported at module level: this package runs where the trainer's
dependencies are installed, not paddle-ocrvl-sft's.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import Callable

SKIP_ENV = "PADDLE_OCRVL_SFT_SKIP_CPU_PATCHES"  # comma-separated patch names: diagnostics and tests only
REFUSED_EXIT = 3


class PatchRefused(RuntimeError):
    """The installed trainer is not the version a patch was written for."""


@dataclass(frozen=True)
class Patch:
    name: str
    target: str  # "module:Qualified.name" of the function replaced or wrapped, or "module" (a package: all its .py files)
    sha256: str  # of the target's source as written for, followed by the sources in ``covers``
    fixes: str  # the upstream error without the patch
    apply: Callable[[object, str, str], None] | None = None  # (owner, attribute, checked source): wraps or replaces it
    edits: tuple[tuple[str, str], ...] = ()  # or: exact text edits of the target's source (one recompilation per target)
    covers: tuple[str, ...] = ()  # more upstream code the patch relies on (same notation), hashed with the target

    def resolve(self):
        """(owner, attribute name, source text) of the target, importing what it needs.

        A module or attribute that no longer exists is a refusal like a changed source (exit 3).
        """
        return _locate(self.name, self.target)

    def hashed_text(self, source: str) -> str:
        """The target's source and, in order, each covered source: what :attr:`sha256` is of."""
        if not self.covers:
            return source
        return source + "".join(f"\n# --- {target}\n{_locate(self.name, target)[2]}" for target in self.covers)


def _locate(patch: str, target: str):
    module_name, _, qualname = target.partition(":")
    try:
        if not qualname:
            spec = importlib.util.find_spec(module_name)
            if spec is None or not spec.origin:
                raise PatchRefused(f"CPU patch {patch!r}: {module_name} is not installed (another version of the trainer?)")
            return None, module_name, _module_text(spec)
        owner = importlib.import_module(module_name)
        *path, attr = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        return owner, attr, inspect.getsource(getattr(owner, attr))
    except PatchRefused:
        raise
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        raise PatchRefused(f"CPU patch {patch!r}: {target} no longer exists in the installed trainer ({type(exc).__name__}: "
                           f"{exc}). Refusing to patch unknown code: use the pinned backend "
                           "(`python -m paddle_ocrvl_sft backend install ...`) or train on a GPU.") from None


def _module_text(spec) -> str:
    """A module's file; for a package, every .py file under it (sorted, each after its relative name)."""
    if not spec.submodule_search_locations:
        with open(spec.origin, encoding="utf-8") as fh:
            return fh.read()
    root = os.path.dirname(spec.origin)
    parts = []
    for folder, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                parts.append(f"# --- {os.path.relpath(os.path.join(folder, name), root)}\n{fh.read()}")
    return "".join(parts)


def source_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check(patch: Patch, source: str) -> None:
    found = source_sha256(patch.hashed_text(source))
    if found != patch.sha256:
        raise PatchRefused(
            f"CPU patch {patch.name!r} was written for another version of {patch.target} "
            f"(source sha256 {found[:16]}…, expected {patch.sha256[:16]}…). Refusing to patch unknown code: "
            "use the pinned backend (`python -m paddle_ocrvl_sft backend install ...`) or train on a GPU."
        )


def replace_in_source(owner, attr: str, source: str, edits: list[tuple[str, str]]) -> None:
    """Recompile ``owner.attr`` from its (checked) source with exact text edits, in its own module."""
    for old, new in edits:
        if source.count(old) != 1:
            raise PatchRefused(f"{owner.__name__}.{attr}: the text to patch is not there exactly once")
        source = source.replace(old, new)
    func = getattr(owner, attr)
    namespace: dict = {}
    code = compile(textwrap.dedent(source), f"<cpu-patched {func.__module__}.{func.__qualname__}>", "exec")
    exec(code, sys.modules[func.__module__].__dict__, namespace)  # noqa: S102 - fixed text over a hash-checked source
    setattr(owner, attr, namespace[attr])


def apply_all(patches: list[Patch], log=print) -> None:
    """Check every patch first (all or nothing), then apply them; names in $SKIP_ENV are left out.

    Text edits of the same function are made together, in one recompilation of its source.
    """
    skip = {s.strip() for s in os.environ.get(SKIP_ENV, "").split(",") if s.strip()}
    chosen = []
    for patch in patches:
        if patch.name in skip:
            log(f"[paddle-ocrvl-sft cpu] NOT applying {patch.name} ({SKIP_ENV})")
            continue
        owner, attr, source = patch.resolve()
        check(patch, source)
        chosen.append((patch, owner, attr, source))
    edits: dict[tuple[int, str], list] = {}
    for patch, owner, attr, source in chosen:
        if patch.edits:
            edits.setdefault((id(owner), attr), [owner, attr, source, []])[3].extend(patch.edits)
        else:
            patch.apply(owner, attr, source)
    for owner, attr, source, changes in edits.values():
        replace_in_source(owner, attr, source, changes)
    for patch, *_ in chosen:
        log(f"[paddle-ocrvl-sft cpu] applied {patch.name}: works around {patch.fixes}")


def config_device(argv: list[str]) -> str | None:
    """The ``device`` a trainer run is for: a ``device=...`` override in ``argv``, else the config file's key."""
    for item in reversed(argv):
        if item.startswith("device="):
            return item.split("=", 1)[1].strip()
    config = next((a for a in argv if a.endswith((".yaml", ".yml"))), None)
    if config is None:
        return None
    import yaml  # the trainers' environments have PyYAML (their own configs are YAML)

    with open(config, encoding="utf-8") as fh:
        loaded = yaml.safe_load(fh)
    return loaded.get("device", "gpu") if isinstance(loaded, dict) else None


def main(patches: Callable[[], list[Patch]], launcher: str, argv: list[str]) -> int:
    """Patch this process, then run the trainer's launcher (``module:function``) with ``argv``.

    Only for a run on the CPU: a config (or override) with another ``device`` is refused before
    anything is patched — these patches change the trainer's code for paddle's CPU build.
    """
    print("[paddle-ocrvl-sft cpu] CPU training is for tiny models and smoke runs; a 0.9B fine-tune belongs on a GPU",
          flush=True)
    device = config_device(argv)
    if device != "cpu":
        print(f"[paddle-ocrvl-sft cpu] refused: the CPU patches are for device cpu, and this run is for device {device!r} "
              "(a GPU run uses the trainer's own launcher, unpatched: re-plan without --device cpu)", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    try:
        apply_all(patches())
    except PatchRefused as exc:
        print(f"[paddle-ocrvl-sft cpu] refused: {exc}", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    module_name, _, func = launcher.partition(":")
    sys.argv = [module_name, *argv]
    getattr(importlib.import_module(module_name), func)()
    return 0
