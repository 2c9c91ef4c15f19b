"""The PaddleOCR-VL releases this tool fine-tunes, as data, and which one a model dir is.

All three are the same 0.9B architecture; what differs is what a fine-tune must reproduce exactly
(shared/reference/MODEL_VERSIONS.md): the chat template's end of the user turn, the image
processor's pixel bounds, the name PaddleX dispatches on, the ``doc_parser`` pipeline version and
the task prompts the release was trained on.

A model dir's release is read off its own files: the generation prompt its chat template renders
(``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``), the pixel bounds
of ``preprocessor_config.json`` and ``Global.model_name`` of ``inference.yml``. Each file that
says something narrows the candidates; files that contradict each other, or a dir that matches
no release, are refused with what was seen. ``--release`` overrides (1.5 and 1.6 ship the same
template and processor: without an ``inference.yml`` only the override tells them apart).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import read_json_if_present

RESOURCES = Path(__file__).parent / "resources"


class AmbiguousRelease(UserError):
    """The files fit more than one release (1.5 and 1.6 without an inference.yml): --release decides."""


@dataclass(frozen=True)
class Release:
    name: str  # what --release takes
    title: str
    released: str
    paddlex_model_name: str  # inference.yml Global.model_name = --vl_rec_model_name
    pipeline_version: str  # paddleocr doc_parser --pipeline_version
    assistant_marker: str  # what the chat template puts between the user's text and the answer
    image_processor: str  # image_processor_type of the released preprocessor_config.json
    min_pixels: int
    max_pixels: int
    tasks: tuple[str, ...]  # built-in task prompts (prompts.BUILTIN_PROMPTS keys) it was trained on
    resources: str  # resources/<dir>: the released text files this package carries

    @property
    def resource_dir(self) -> Path:
        return RESOURCES / self.resources

    @property
    def pixel_bounds(self) -> tuple[int, int]:
        return self.min_pixels, self.max_pixels

    @property
    def paddlex_pipeline(self) -> str:
        """The PaddleX pipeline ``paddleocr doc_parser --pipeline_version`` picks for this release."""
        return PADDLEX_PIPELINES[self.name]


_V1_TASKS = ("ocr", "table", "formula", "chart")
RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("v1", "PaddleOCR-VL (0.9B, first release)", "2025-10", "PaddleOCR-VL-0.9B", "v1", "\nAssistant: ",
            "SiglipImageProcessor", 147384, 2822400, _V1_TASKS, "paddleocr_vl_0.9b"),
    Release("v1.5", "PaddleOCR-VL-1.5", "2026-01-29", "PaddleOCR-VL-1.5-0.9B", "v1.5", "\nAssistant:\n",
            "PaddleOCRVLImageProcessor", 112896, 1003520, (*_V1_TASKS, "spotting", "seal"), "paddleocr_vl_1.5"),
    Release("v1.6", "PaddleOCR-VL-1.6", "2026-05-27", "PaddleOCR-VL-1.6-0.9B", "v1.6", "\nAssistant:\n",
            "PaddleOCRVLImageProcessor", 112896, 1003520, (*_V1_TASKS, "spotting", "seal"), "paddleocr_vl_1.6"),
)}
NAMES = tuple(RELEASES)
# paddleocr's PaddleOCRVL maps --pipeline_version to these PaddleX pipelines (paddleocr/_pipelines/paddleocr_vl.py)
PADDLEX_PIPELINES = {"v1": "PaddleOCR-VL", "v1.5": "PaddleOCR-VL-1.5", "v1.6": "PaddleOCR-VL-1.6"}


def get(name: str) -> Release:
    """The release called ``name`` (``v1``, ``v1.5``, ``v1.6``; ``1.5`` and ``0.9B`` are accepted too)."""
    key = {"0.9b": "v1", "1": "v1", "1.5": "v1.5", "1.6": "v1.6"}.get(name.lower(), name.lower())
    if key not in RELEASES:
        raise UserError(f"--release {name}: unknown release; choose from {', '.join(NAMES)}")
    return RELEASES[key]


def by_model_name(model_name: str) -> Release | None:
    return next((r for r in RELEASES.values() if r.paddlex_model_name == model_name), None)


@dataclass
class Detection:
    release: Release
    evidence: list[str] = field(default_factory=list)  # "file: what it says -> candidates"
    notes: list[str] = field(default_factory=list)  # what does not decide the release but is worth saying
    given: bool = False  # named by --release rather than read off the files

    def to_record(self) -> dict:
        """What plan.json keeps under "release" (other stages read ``["release"]["name"]``)."""
        return {"name": self.release.name, "evidence": list(self.evidence), "notes": list(self.notes), "given": self.given}

    @classmethod
    def from_record(cls, record: dict) -> "Detection":
        return cls(get(record["name"]), list(record.get("evidence", [])), list(record.get("notes", [])),
                   bool(record.get("given")))

    def describe(self) -> str:
        """One line: the release and what said so."""
        said = "; ".join(self.evidence) or "no file names it"
        if self.given:
            return f"{self.release.name} ({self.release.title}): --release (the files: {said})"
        return f"{self.release.name} ({self.release.title}): {said}"


def render_generation_prompt(template: str, text: str = "OCR:") -> str:
    """What a chat template sends for one image and ``text`` (the generation prompt included),
    rendered by jinja2 as transformers and PaddleX render it."""
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def template_marker(template: str) -> str | None:
    """The text a template puts after the user's query ("\\nAssistant: " for v1), None if it
    does not render the PaddleOCR-VL layout at all."""
    probe = "\x00QUERY\x00"
    try:
        rendered = render_generation_prompt(template, probe)
    except Exception:  # noqa: BLE001 - any template error means: not a template we know
        return None
    head, sep, tail = rendered.partition(probe)
    return tail if sep and head.startswith("<|begin_of_sentence|>User: ") else None


def _chat_template(model_dir: Path) -> tuple[str, str] | None:
    path = model_dir / "chat_template.jinja"
    if path.is_file():
        return path.name, path.read_text(encoding="utf-8")
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    return ("tokenizer_config.json chat_template", template) if isinstance(template, str) else None


def _json(path: Path) -> dict | None:
    value = read_json_if_present(path)
    return value if isinstance(value, dict) else None


def evidence_of(model_dir: str | os.PathLike) -> tuple[list[tuple[str, set[str]]], list[str]]:
    """What each file of a model dir says about its release: ``[(finding, candidate names)]``, notes."""
    from paddle_ocrvl_sft.bundle import yml_model_name

    model_dir = Path(model_dir)
    found: list[tuple[str, set[str]]] = []
    notes: list[str] = []
    template = _chat_template(model_dir)
    if template:
        where, text = template
        marker = template_marker(text)
        matching = {r.name for r in RELEASES.values() if r.assistant_marker == marker}
        shown = "does not render the PaddleOCR-VL prompt" if marker is None else f"ends the user turn with {marker!r}"
        found.append((f"{where}: {shown}", matching))
    processor = _json(model_dir / "preprocessor_config.json")
    if processor is not None:
        size = processor.get("size") if isinstance(processor.get("size"), dict) else {}
        bounds = tuple(processor.get(k, size.get(k)) for k in ("min_pixels", "max_pixels"))
        matching = {r.name for r in RELEASES.values() if r.pixel_bounds == bounds}
        if matching:
            found.append((f"preprocessor_config.json: min/max pixels {bounds[0]}/{bounds[1]}", matching))
        else:
            notes.append(f"preprocessor_config.json: min/max pixels {bounds[0]}/{bounds[1]} are no release's "
                         "(changed on purpose? they decide the image token counts)")
    yml = model_dir / "inference.yml"
    if yml.is_file():
        name = yml_model_name(yml.read_text(encoding="utf-8"))
        release = by_model_name(name or "")
        found.append((f"inference.yml: model_name {name}", {release.name} if release else set()))
    return found, notes


def detect(model_dir: str | os.PathLike, override: str | None = None) -> Detection:
    """The release of a model dir, from its own files (``override``: ``--release``).

    Refused: a dir whose files contradict each other, one that matches no release, and one that
    says nothing (no chat template, processor bounds or inference.yml) — each with what was seen.
    1.5 and 1.6 differ only in inference.yml: without it, ``--release`` decides.
    """
    model_dir = Path(model_dir)
    found, notes = evidence_of(model_dir)
    seen = "; ".join(finding for finding, _ in found) or "no chat template, pixel bounds or inference.yml"
    candidates = set(NAMES)
    for _, matching in found:
        candidates &= matching
    if override is not None:
        release = get(override)
        if release.name not in candidates:
            notes.append(f"--release {release.name} overrides what {model_dir} says ({seen})")
        elif not found:
            notes.append(f"--release {release.name}: {model_dir} has no file that names a release")
        return Detection(release, [finding for finding, _ in found], notes, given=True)
    if not found:
        raise UserError(f"{model_dir}: cannot tell which PaddleOCR-VL release this is ({seen}); "
                        f"pass --release {'|'.join(NAMES)}")
    if not candidates:
        raise UserError(f"{model_dir}: its files name no single PaddleOCR-VL release ({seen}); "
                        f"fix the dir or pass --release {'|'.join(NAMES)}")
    if len(candidates) > 1:
        options = "|".join(n for n in NAMES if n in candidates)
        raise AmbiguousRelease(f"{model_dir}: could be any of {options.replace('|', ', ')} ({seen}); pass --release {options}")
    return Detection(RELEASES[candidates.pop()], [finding for finding, _ in found], notes)


def task_prompt_release_note(prompt: str, release: Release) -> str | None:
    """A warning when ``prompt`` is a built-in task the release was never trained on (None otherwise)."""
    from paddle_ocrvl_sft.prompts import prompt_kind

    kind = prompt_kind(prompt)
    if kind in ("kie", "other") or kind in release.tasks:
        return None
    newer = [r.name for r in RELEASES.values() if kind in r.tasks]
    return (f"prompt {prompt!r}: {release.title} was not trained on this task (known to {', '.join(newer)}); "
            "fine-tuning teaches it from your data alone")


def shown(text: str) -> str:
    """A marker as docs and messages show it ("\\nAssistant:\\n")."""
    return text.replace("\n", "\\n")


# --- what the stages after plan take from here ----------------------------------------------------


def of_plan(record: dict) -> Release | None:
    """The release a plan.json record was made for; None for a plan written before releases were recorded."""
    name = (record.get("release") or {}).get("name") if isinstance(record, dict) else None
    return get(name) if name else None


def bundle_model_name(model_dir: str | os.PathLike, override: str | None = None) -> tuple[str, Detection]:
    """The name PaddleX must load an inference bundle under, and the bundle's release.

    PaddleX loads a local dir only under the ``Global.model_name`` of its inference.yml ("Model
    name mismatch" otherwise), so that is the name. The release comes from the bundle's files
    (refused when they contradict each other, as :func:`detect`); with ``override`` its name
    must be the one inference.yml gives, or PaddleX would refuse the bundle later, less clearly.
    """
    from paddle_ocrvl_sft.bundle import yml_model_name

    model_dir = Path(model_dir)
    detection = detect(model_dir, override)
    expected = detection.release.paddlex_model_name
    yml = model_dir / "inference.yml"
    name = yml_model_name(yml.read_text(encoding="utf-8")) if yml.is_file() else None
    if name is None:
        return expected, detection
    if name != expected:
        # only with an override: without one, detect() already refused an inference.yml at odds with the rest
        raise UserError(f"{yml}: model_name {name}, not {expected} (--release {detection.release.name}); PaddleX loads "
                        "a bundle only under the name its inference.yml gives: re-export it with "
                        f"`export RUN_DIR --base BASE --release {detection.release.name}`")
    return name, detection


def doc_parser_args(release: Release) -> list[str]:
    """The ``paddleocr doc_parser`` options that run a bundle of ``release``: its pipeline version
    (paddleocr 3.6+ defaults to v1.6) and its VL model name (the bundle's inference.yml names it)."""
    return ["--pipeline_version", release.pipeline_version, "--vl_rec_model_name", release.paddlex_model_name]
