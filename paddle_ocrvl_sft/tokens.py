"""How many tokens a sample costs: image tokens (exact) and text tokens (exact or estimated).

The image formula is the ``smart_resize`` of ERNIEKit's ``SiglipImageProcessor`` and of
transformers' PaddleOCR-VL image processor (identical; shared/reference/FACTS.md, "Image tokens");
what differs between releases (pixel bounds, the assistant marker) is passed in by the caller.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import read_json_if_present, read_text

PATCH_SIZE = 14
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28 pixels per image token side
MAX_ASPECT_RATIO = 200
# Released PaddleOCR-VL-0.9B (v1) preprocessor_config.json: 188 .. 3600 image tokens (1.5/1.6: releases.py).
DEFAULT_MIN_PIXELS = 147384
DEFAULT_MAX_PIXELS = 2822400

# What the chat template (shared/reference chat_template.jinja) adds around the texts:
# <|begin_of_sentence|> once, <|IMAGE_START|>/<|IMAGE_END|> per image, "User: " + the assistant
# marker and </s> per turn. The marker is the release's: v1 "\nAssistant: ", 1.5/1.6 "\nAssistant:\n"
# (releases.py; the caller passes it in, so this module stays free of the release table).
SAMPLE_SPECIAL_TOKENS = 1
IMAGE_SPECIAL_TOKENS = 2
TURN_SPECIAL_TOKENS = 1
USER_MARKER = "User: "
V1_ASSISTANT_MARKER = "\nAssistant: "


class AspectRatioError(ValueError):
    """The image is more than 200 times longer than wide (ERNIEKit and transformers refuse it)."""


@dataclass(frozen=True)
class PixelBounds:
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise UserError(f"min_pixels {self.min_pixels} / max_pixels {self.max_pixels}: need 1 <= min_pixels <= max_pixels")

    def with_overrides(self, min_pixels: int | None = None, max_pixels: int | None = None) -> "PixelBounds":
        """These bounds with ``--min-pixels``/``--max-pixels`` applied where given."""
        return PixelBounds(self.min_pixels if min_pixels is None else min_pixels,
                           self.max_pixels if max_pixels is None else max_pixels)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike) -> "PixelBounds":
        """Read min/max pixels from a model dir's ``preprocessor_config.json`` (as ERNIEKit does)."""
        path = Path(model_dir) / "preprocessor_config.json"
        try:
            cfg = json.loads(read_text(path, missing="not found (the model dir needs its preprocessor_config.json)"))
        except ValueError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        size = cfg.get("size") if isinstance(cfg, dict) and isinstance(cfg.get("size"), dict) else {}
        try:
            lo, hi = (int(cfg.get(k, size.get(k))) for k in ("min_pixels", "max_pixels"))
        except (TypeError, ValueError, AttributeError):
            raise UserError(f"{path}: field min_pixels/max_pixels: missing or not an integer") from None
        try:
            return cls(lo, hi)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None


def smart_resize(height: int, width: int, bounds: PixelBounds = PixelBounds()) -> tuple[int, int]:
    """The (height, width) an image is resized to before patching: multiples of 28 within bounds.

    Follows shared/reference/FACTS.md "Image tokens" step by step; Python's ``round`` is banker's
    rounding there too, so it is used here unchanged.
    """
    if height < FACTOR:
        width = round(width * FACTOR / height)
        height = FACTOR
    if width < FACTOR:
        height = round(height * FACTOR / width)
        width = FACTOR
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise AspectRatioError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio:g}")
    h = round(height / FACTOR) * FACTOR
    w = round(width / FACTOR) * FACTOR
    if h * w > bounds.max_pixels:
        beta = math.sqrt(height * width / bounds.max_pixels)
        h = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h * w < bounds.min_pixels:
        beta = math.sqrt(bounds.min_pixels / (height * width))
        h = math.ceil(height * beta / FACTOR) * FACTOR
        w = math.ceil(width * beta / FACTOR) * FACTOR
    return h, w


def image_tokens(height: int, width: int, bounds: PixelBounds = PixelBounds()) -> int:
    """Image placeholder tokens for one image: (h/28)·(w/28) after ``smart_resize``."""
    h, w = smart_resize(height, width, bounds)
    return (h // FACTOR) * (w // FACTOR)


def estimate_text_tokens(text: str) -> int:
    """A stated estimate of text tokens without a tokenizer, meant to err high.

    ERNIE's SentencePiece vocabulary averages about 4 ASCII characters per token; non-ASCII
    scripts (CJK, Bengali, ...) are counted one token per character, which over-counts common
    CJK words but keeps ``max_seq_len`` checks on the safe side.
    """
    ascii_chars = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


class TextTokenCounter:
    """Counts text tokens: exactly with a model dir's tokenizer, else by estimate.

    The exact count is SentencePiece over ``tokenizer.model`` with the dir's added tokens
    (``added_tokens.json``: ``<fcel>``, ``<nl>``, ``<|LOC_0|>`` ...) counted as one token each,
    which is how the released tokenizer treats them.
    """

    def __init__(self, tokenizer_dir: str | os.PathLike | None = None, assistant_marker: str = V1_ASSISTANT_MARKER):
        self.exact = tokenizer_dir is not None
        self.assistant_marker = assistant_marker  # what the release's template puts between prompt and answer
        self._sp = None
        self._added = None
        if tokenizer_dir is not None:
            path = Path(tokenizer_dir) / "tokenizer.model"
            if not path.is_file():
                raise UserError(f"{path}: not found (--tokenizer needs a dir with tokenizer.model)")
            import sentencepiece  # only needed for exact counts

            try:
                self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
            except (OSError, RuntimeError) as exc:
                raise UserError(f"{path}: not a SentencePiece model ({exc})") from None
            self._added = _added_tokens_pattern(Path(tokenizer_dir) / "added_tokens.json")

    def __call__(self, text: str) -> int:
        if self._sp is None:
            return estimate_text_tokens(text)
        if self._added is None:
            return len(self._sp.encode(text))
        pieces = self._added.split(text)  # captured added tokens sit at the odd positions
        return len(pieces) // 2 + sum(len(self._sp.encode(p)) for p in pieces[::2] if p)

    @functools.cached_property
    def turn_overhead(self) -> int:
        """Tokens a (prompt, answer) turn adds besides its texts: role markers and </s>."""
        return self(USER_MARKER) + self(self.assistant_marker) + TURN_SPECIAL_TOKENS


def _added_tokens_pattern(path: Path) -> re.Pattern | None:
    tokens = read_json_if_present(path)
    if not isinstance(tokens, dict) or not tokens:
        return None
    # longest first, so "<|LOC_100|>" wins over a shorter token that is its prefix
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")


def sample_tokens(image_token_counts: list[int], turns: list[tuple[str, str]], count_text: TextTokenCounter) -> int:
    """Sequence length of one sample as the chat template lays it out (images + texts + markers)."""
    markers = count_text.turn_overhead
    return (
        SAMPLE_SPECIAL_TOKENS
        + sum(n + IMAGE_SPECIAL_TOKENS for n in image_token_counts)
        + sum(count_text(prompt) + count_text(answer) + markers for prompt, answer in turns)
    )
