"""Trainer backends behind one small interface (:class:`paddle_ocrvl_sft.backends.base.Backend`).

- ``erniekit``: ERNIEKit's ``OCR-VL-SFT`` stage (v1.4, full fine-tuning; the guide's trainer);
- ``paddleformers``: PaddleFormers >= 1.2 ``VL-SFT`` (full or LoRA; a maintained code base).

This file stays import-light (stdlib only): ``backends.cpu`` runs inside a trainer's own Python,
where none of this package's dependencies are installed.
"""

from __future__ import annotations

import importlib

NAMES = ("erniekit", "paddleformers")
DEFAULT = "erniekit"


def get(name: str):
    """The backend object of a trainer name (``erniekit`` or ``paddleformers``)."""
    if name not in NAMES:
        from paddle_ocrvl_sft.errors import UsageError

        raise UsageError(f"unknown backend {name!r}: choose from {', '.join(NAMES)}")
    return importlib.import_module(f"paddle_ocrvl_sft.backends.{name}").BACKEND
