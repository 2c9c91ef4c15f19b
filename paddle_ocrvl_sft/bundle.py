"""What an inference bundle is: the files PaddleX's VL-rec predictor and ``paddleocr doc_parser`` need.

``export`` writes bundles and ``predict``/``serve`` read them; both take the contract from here,
so neither imports the other for it (shared/reference/FACTS.md, "PaddleX / PaddleOCR inference").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError

DEFAULT_MODEL_NAME = "PaddleOCR-VL-0.9B"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# What a --vl_rec_model_dir must hold (FACTS "Custom VL-rec model dir minimum").
VL_REC_REQUIRED = ("inference.yml", "config.json", WEIGHTS, "preprocessor_config.json",
                   "tokenizer.model", "tokenizer_config.json", "chat_template.jinja")


def yml_model_name(text: str) -> str | None:
    """``Global.model_name`` of an inference.yml text (what PaddleX dispatches on)."""
    m = re.search(r"^\s*model_name:\s*['\"]?([^'\"\s#]+)", text, re.M)
    return m.group(1) if m else None


def model_name_of(model_dir: Path) -> str:
    """The model name a bundle declares in inference.yml (the default when it has none)."""
    path = model_dir / "inference.yml"
    if path.is_file():
        return yml_model_name(path.read_text(encoding="utf-8")) or DEFAULT_MODEL_NAME
    return DEFAULT_MODEL_NAME


def check_model_dir(model_dir: str | os.PathLike) -> None:
    """Name every missing inference file up front instead of PaddleX's first FileNotFoundError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: not a directory")
    missing = [name for name in VL_REC_REQUIRED if not (model_dir / name).is_file()]
    if missing:
        raise UserError(f"--model {model_dir}: missing {', '.join(missing)} (an ERNIEKit output dir? "
                        "run `python -m paddle_ocrvl_sft export RUN_DIR --base BASE_DIR` first)")
