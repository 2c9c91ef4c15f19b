"""Prompts the model is trained and queried with — ONE rendering for data and predict.

Training and inference prompts must match byte for byte (shared/reference/FACTS.md, "Prompt
format"), so every KIE prompt and target in this project is produced by :func:`render_json`.
"""

from __future__ import annotations

import json
from typing import Any

# Built-in task queries of PaddleOCR-VL (seed 000 §8.1, seed 001; PaddleX 3.4+ adds the last two).
BUILTIN_PROMPTS = {
    "ocr": "OCR:",
    "table": "Table Recognition:",
    "formula": "Formula Recognition:",
    "chart": "Chart Recognition:",
    "spotting": "Spotting:",
    "seal": "Seal Recognition:",
}
_KIND_OF_PROMPT = {text: kind for kind, text in BUILTIN_PROMPTS.items()}
KIE_PREFIX = "OCR:"
PROMPT_KINDS = (*BUILTIN_PROMPTS, "kie", "other")


def render_json(obj: Any) -> str:
    """The one JSON rendering used for KIE prompts and targets (seed 001 spacing, UTF-8 kept)."""
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def kie_prompt(query: dict) -> str:
    """``OCR:{"FIELD": ""}``-style prompt for a query object (``{}`` means: extract everything)."""
    return KIE_PREFIX + render_json(query)


def query_for_fields(fields: list[str]) -> dict:
    """``a,b`` → ``{"a": "", "b": ""}``: the string-valued query shape of seed 001."""
    return {name: "" for name in fields}


def prompt_kind(prompt: str) -> str:
    """Classify a prompt: a built-in task, ``kie`` (``OCR:`` + a JSON object) or ``other``."""
    kind = _KIND_OF_PROMPT.get(prompt)
    if kind:
        return kind
    if prompt.startswith(KIE_PREFIX + "{"):
        try:
            if isinstance(json.loads(prompt[len(KIE_PREFIX) :]), dict):
                return "kie"
        except ValueError:
            pass
    return "other"
