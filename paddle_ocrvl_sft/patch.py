"""Patch PaddleX so a custom prompt reaches PaddleOCR-VL verbatim: ``status | apply | revert``.

Stock PaddleX blocks prompt-based KIE (seed 001: ``OCR:{"RECEIPT NUMBER": ""}``) in three places
of ``paddlex/inference/pipelines/paddleocr_vl/pipeline.py`` (shared/reference/FACTS.md, "PaddleX"):
the ``assert prompt_label.lower() in [...]``, the lowercased ``"label": prompt_label.lower()`` and
the block label -> query mapping. The patch itself is data (``patches/paddlex_custom_prompt.json``):
each point is located structurally — the one innermost AST node of a given type whose source
contains a snippet (optionally after a given sibling statement), and inside it an exact anchor
that must occur once — and the anchor is replaced. Any other shape is refused with nothing written.

Nothing is lost: ``apply`` keeps a byte-exact backup beside the file (named by its sha256) and a
small record of the hashes; ``revert`` restores the backup only while the file still has the hash
``apply`` wrote. Every write is atomic (:mod:`paddle_ocrvl_sft.io`).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from paddle_ocrvl_sft import data_dir
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import atomic_open

PATCH_FILE = data_dir("patches") / "paddlex_custom_prompt.json"
RECORD_SUFFIX = ".paddle-ocrvl-sft.json"  # beside the target: which patch, which hashes, which backup
_RECORD_KEYS = ("patch_version", "original_sha256", "patched_sha256", "backup")
_MARKER_RE = re.compile(r"paddle-ocrvl-sft custom-prompt patch v(\d+)")

UNPATCHED, PATCHED, MODIFIED, UNSUPPORTED = "unpatched", "patched", "modified", "unsupported"


class UnsupportedShape(UserError):
    """The PaddleX source does not have the shape the patch was written for."""


def load_patch(path: str | os.PathLike = PATCH_FILE) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- locating paddlex ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The pipeline file to patch and the paddlex it belongs to."""

    package_dir: Path  # .../paddlex
    path: Path  # .../paddlex/inference/pipelines/paddleocr_vl/pipeline.py
    version: str  # from the paddlex-*.dist-info beside the package, "unknown" without one

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.name + RECORD_SUFFIX)

    def backup_path(self, original_sha: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{original_sha[:16]}.orig")


def find_target(paddlex_path: str | os.PathLike | None = None, patch: dict | None = None) -> Target:
    """Locate ``pipeline.py``: in ``paddlex_path`` (see :func:`package_dir_of`) or in the installed
    paddlex, found with ``find_spec`` (which does not run paddlex's ``__init__``: importing paddlex
    takes seconds)."""
    patch = patch or load_patch()
    if paddlex_path is not None:
        package_dir = package_dir_of(Path(paddlex_path))
    else:
        import importlib.util

        spec = importlib.util.find_spec("paddlex")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("paddlex is not installed in this Python (pip install paddlex, or pass --paddlex-path DIR)")
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir.parent / patch["target"]
    if not path.is_file():
        raise UnsupportedShape(f"{path}: not found; this paddlex has no PaddleOCR-VL pipeline where the patch expects it")
    return Target(package_dir, path, _dist_version(package_dir))


def package_dir_of(given: Path) -> Path:
    """The ``paddlex`` package dir that ``--paddlex-path`` means: ``given`` holds it (site-packages,
    an unpacked wheel), is it (what ``pip show -f`` and tracebacks name), or lies inside it (a
    file of a traceback)."""
    if (given / "paddlex").is_dir():
        return given / "paddlex"
    inside = next((p for p in (given, *given.parents) if p.name == "paddlex" and p.is_dir()), None)
    if inside is None:
        raise UserError(f"{given}: neither holds the 'paddlex' package nor lies inside it (--paddlex-path)")
    return inside


def _dist_version(package_dir: Path) -> str:
    names = sorted(p.name for p in package_dir.parent.glob("paddlex-*.dist-info"))
    return names[-1][len("paddlex-") : -len(".dist-info")] if names else "unknown"


PIPELINE_CONFIGS = Path("configs") / "pipelines"  # inside the paddlex package


def release_pipelines(package_dir: Path) -> dict[str, str | None]:
    """{release: the VL recognition model its pipeline config names} for each PaddleOCR-VL release
    whose ``doc_parser`` pipeline this paddlex ships (``configs/pipelines/PaddleOCR-VL-1.5.yaml``,
    ...; read as files, paddlex is not imported). A paddlex without the 1.5 pipeline (< 3.4) cannot
    run ``--pipeline_version v1.5`` nor load a bundle named ``PaddleOCR-VL-1.5-0.9B``."""
    import yaml

    from paddle_ocrvl_sft import releases

    found: dict[str, str | None] = {}
    for release in releases.RELEASES.values():
        path = package_dir / PIPELINE_CONFIGS / f"{release.paddlex_pipeline}.yaml"
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: unreadable ({exc})") from None
        rec = ((config or {}).get("SubModules") or {}).get("VLRecognition") or {} if isinstance(config, dict) else {}
        found[release.name] = rec.get("model_name") if isinstance(rec, dict) else None
    return found


def releases_line(target: Target) -> str | None:
    """Which releases this paddlex runs (None when its pipeline configs are not there to read)."""
    if not (target.package_dir / PIPELINE_CONFIGS).is_dir():
        return None
    found = release_pipelines(target.package_dir)
    shown = ", ".join(f"{name} ({model})" for name, model in found.items()) or "none"
    return f"PaddleOCR-VL releases with a doc_parser pipeline in paddlex {target.version}: {shown}"


# --- the transformation (pure: text in, text out) ------------------------------------------


def marker(patch: dict) -> str:
    return patch["marker"].format(version=patch["version"])


def patch_versions_in(source: str) -> set[int]:
    """Versions of this patch whose marker comments the source carries."""
    return {int(v) for v in _MARKER_RE.findall(source)}


@dataclass
class Point:
    """Where one patch point sits in a source: the line index and the anchor's column."""

    name: str
    line: int  # 0-based
    col: int


def locate(source: str, patch: dict) -> list[Point]:
    """Find every patch point in ``source``; :class:`UnsupportedShape` names the first one that
    is missing or ambiguous."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise UnsupportedShape(f"the file does not parse as Python (line {exc.lineno}: {exc.msg})") from None
    lines = _lines(source)
    return [_locate_point(tree, lines, spec) for spec in patch["points"]]


def _locate_point(tree: ast.AST, lines: list[str], spec: dict) -> Point:
    nodes = [n for n in _candidates(tree, spec["node"], spec["code"]) if _is_after(tree, n, spec.get("after"))]
    if len(nodes) != 1:
        raise UnsupportedShape(
            f"patch point '{spec['name']}': expected exactly one {spec['node']} containing "
            f"{spec['code']!r}{' after ' + repr(spec['after']) if spec.get('after') else ''}, found {len(nodes)}"
        )
    node = nodes[0]
    hits = [
        (i, line.find(spec["anchor"]))
        for i in range(node.lineno - 1, node.end_lineno)
        for line in [lines[i]]
        if spec["anchor"] in line
    ]
    if len(hits) != 1 or lines[hits[0][0]].count(spec["anchor"]) != 1:
        raise UnsupportedShape(
            f"patch point '{spec['name']}': the anchor {spec['anchor']!r} must occur exactly once in the "
            f"{spec['node']} at line {node.lineno}, found {sum(lines[i].count(spec['anchor']) for i, _ in hits)}"
        )
    return Point(spec["name"], *hits[0])


def _candidates(tree: ast.AST, node_type: str, code: str) -> list[ast.AST]:
    """Innermost nodes of ``node_type`` whose unparsed source contains ``code``."""
    kind = getattr(ast, node_type)
    found = [n for n in ast.walk(tree) if isinstance(n, kind) and code in ast.unparse(n)]
    ids = {id(n) for n in found}
    return [n for n in found if not any(c is not n and id(c) in ids for c in ast.walk(n))]


def _is_after(tree: ast.AST, node: ast.AST, after: str | None) -> bool:
    """True when ``after`` is None or an earlier sibling statement of ``node`` unparses to it."""
    if after is None:
        return True
    for parent in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(parent, name, None)
            if isinstance(body, list) and node in body:
                return any(ast.unparse(s) == after for s in body[: body.index(node)])
    return False


def _lines(source: str) -> list[str]:
    # the same line breaks as the tokenizer (\n, \r\n, \r), unlike str.splitlines
    return io.StringIO(source, newline="").readlines()


def apply_to_source(source: str, patch: dict) -> str:
    """The patched text; every byte outside the three anchors is kept."""
    if patch_versions_in(source):
        raise UnsupportedShape("the file already carries a paddle-ocrvl-sft patch marker")
    lines = _lines(source)
    for point, spec in sorted(zip(locate(source, patch), patch["points"]), key=lambda ps: -ps[0].line):
        lines[point.line] = _replace_anchor(lines[point.line], point.col, spec, marker(patch))
    patched = "".join(lines)
    try:  # a patch that breaks the syntax must never be written
        compile(patched, "pipeline.py", "exec")
    except SyntaxError as exc:
        raise UnsupportedShape(f"the patched file would not compile (line {exc.lineno}: {exc.msg})") from None
    return patched


def _replace_anchor(line: str, col: int, spec: dict, mark: str) -> str:
    body = line.rstrip("\r\n")
    eol = line[len(body) :]
    indent = body[: len(body) - len(body.lstrip())]
    new = (body[:col] + spec["replacement"] + body[col + len(spec["anchor"]) :]).split("\n")
    new[0] += f"  # {mark}"
    return (eol or "\n").join([new[0], *(indent + part for part in new[1:])]) + eol


# --- status / apply / revert on a file -----------------------------------------------------


@dataclass
class Status:
    state: str  # UNPATCHED | PATCHED | MODIFIED | UNSUPPORTED
    target: Target
    message: str
    patch_version: int | None = None  # the patch version that is applied (PATCHED)
    record: dict | None = field(default=None, repr=False)

    def line(self) -> str:
        return f"{self.target.path} (paddlex {self.target.version}): {self.state}: {self.message}"


def read_record(target: Target) -> dict | None:
    if not target.record_path.exists():
        return None
    try:
        record = json.loads(target.record_path.read_text(encoding="utf-8"))
        missing = [k for k in _RECORD_KEYS if k not in record]
    except (OSError, ValueError, TypeError) as exc:
        missing, record = [f"unreadable: {exc}"], None
    if missing:
        raise UserError(f"{target.record_path}: broken patch record (missing {', '.join(missing)}); move it away to start over")
    return record


def status(target: Target, patch: dict | None = None) -> Status:
    """What state the pipeline file is in, judged from its bytes and the record apply wrote."""
    patch = patch or load_patch()
    data = target.path.read_bytes()
    digest, record = sha256(data), read_record(target)
    if record and digest == record["patched_sha256"]:
        v = record["patch_version"]
        note = "" if v == patch["version"] else f" (this tool has v{patch['version']}: apply upgrades it)"
        return Status(PATCHED, target, f"custom prompts enabled by patch v{v}{note}", v, record)
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Status(UNSUPPORTED, target, f"not UTF-8 text (byte {exc.start}), the patch cannot be applied", None, record)
    if patch_versions_in(source):
        why = "no patch record beside it" if record is None else "its hash is not the one apply wrote"
        return Status(MODIFIED, target, f"it carries the patch marker but {why}: modified by someone else", None, record)
    try:
        locate(source, patch)
    except UnsupportedShape as exc:
        if record:
            return Status(MODIFIED, target, f"changed since apply ({exc}): modified by someone else", None, record)
        return Status(UNSUPPORTED, target, f"unknown upstream shape, the patch cannot be applied: {exc}")
    note = "built-in labels only" + _checked_note(target, patch, digest)
    if record and digest != record["original_sha256"]:
        note += f"; an earlier patch record is stale (paddlex reinstalled?), its backup stays at {record['backup']}"
    return Status(UNPATCHED, target, note, None, record)


def _checked_note(target: Target, patch: dict, digest: str) -> str:
    checked = patch.get("checked", {}).get(target.version)
    if checked and checked["original_sha256"] != digest:
        return f" (paddlex {target.version} was checked with a different pipeline.py: locally modified?)"
    if not checked:
        return f" (paddlex {target.version} is not in the checked list; the patch locates its points structurally)"
    return ""


def apply(target: Target, patch: dict | None = None) -> Status:
    """Patch the file (idempotent); refuse, writing nothing, unless it is unpatched or patched
    by an older version of this patch."""
    patch = patch or load_patch()
    st = status(target, patch)
    if st.state == PATCHED and st.patch_version == patch["version"]:
        return Status(PATCHED, target, f"already patched (v{patch['version']}), nothing written", st.patch_version, st.record)
    if st.state == PATCHED:
        original = _read_backup(target, st.record)
    elif st.state == UNPATCHED:
        original = target.path.read_bytes()
    else:
        raise UserError(f"refusing to patch {target.path}: {st.state}: {st.message}. Nothing was written.")
    patched = apply_to_source(original.decode("utf-8"), patch).encode("utf-8")
    original_sha = sha256(original)
    backup = target.backup_path(original_sha)
    record = {
        "patch": patch["name"],
        "patch_version": patch["version"],
        "paddlex_version": target.version,
        "original_sha256": original_sha,
        "patched_sha256": sha256(patched),
        "backup": backup.name,
    }
    # Order matters for a crash: backup, then record, then the file. A crash before the last
    # step leaves the file with its original hash, which status reports as unpatched.
    if not backup.exists() or sha256(backup.read_bytes()) != original_sha:
        _write_like(target.path, backup, original)
    _write_like(target.path, target.record_path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    _write_like(target.path, target.path, patched)
    return Status(PATCHED, target, f"patched with v{patch['version']}; backup {backup.name}", patch["version"], record)


def revert(target: Target, patch: dict | None = None) -> Status:
    """Restore the byte-exact original, only while the file has the hash apply wrote."""
    patch = patch or load_patch()
    st = status(target, patch)
    if st.state == UNPATCHED:
        return Status(UNPATCHED, target, "not patched, nothing to revert", None, st.record)
    if st.state != PATCHED:
        backup = f" The original is kept in {target.path.parent / st.record['backup']}." if st.record else ""
        raise UserError(
            f"refusing to revert {target.path}: {st.message}. Reverting would overwrite those changes, so "
            f"nothing was written; nothing is lost.{backup} Compare the files and restore by hand, or reinstall paddlex."
        )
    original = _read_backup(target, st.record)
    _write_like(target.path, target.path, original)
    target.record_path.unlink()
    (target.path.parent / st.record["backup"]).unlink()  # identical to the restored file
    return Status(UNPATCHED, target, f"restored the original (sha256 {st.record['original_sha256'][:16]}…)")


def _read_backup(target: Target, record: dict) -> bytes:
    path = target.path.parent / record["backup"]
    data = path.read_bytes() if path.exists() else b""
    if sha256(data) != record["original_sha256"]:
        raise UserError(f"{path}: the backup is missing or damaged (sha256 mismatch); nothing was written")
    return data


def _write_like(template: Path, path: Path, data: bytes) -> None:
    """Atomic write that keeps the permission bits of ``template`` (mkstemp makes 0600 files)."""
    mode = template.stat().st_mode & 0o7777
    try:
        with atomic_open(path, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
    except PermissionError as exc:
        raise UserError(
            f"{path}: cannot write ({exc.strerror}); patch with write access to this paddlex, or touch no "
            "file: `python -m paddle_ocrvl_sft predict` needs no patch, and Python code that drives the "
            "pipeline can call paddle_ocrvl_sft.paddlex_runtime.predict_with_prompt(pipeline, input, prompt) "
            "(docs/patch.md, runtime mode)"
        ) from None
