"""The ERNIEKit OCR-VL sample: building it and reading it back (seed 000 §3.2).

    {"image_info": [{"matched_text_index": 0, "image_url": "img.png"}],
     "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "answer", "tag": "no_mask"}]}

``mask`` items are prompts (excluded from the loss), ``no_mask`` items are answers.
"""

from __future__ import annotations

import os
from pathlib import Path

MASK, NO_MASK = "mask", "no_mask"


def make_sample(image_urls: list[str], turns: list[tuple[str, str]]) -> dict:
    """A sample with all images attached to the first prompt and (prompt, answer) turns in order."""
    text_info = []
    for prompt, answer in turns:
        text_info += [{"text": prompt, "tag": MASK}, {"text": answer, "tag": NO_MASK}]
    return {
        "image_info": [{"matched_text_index": 0, "image_url": url} for url in image_urls],
        "text_info": text_info,
    }


def sample_turns(sample: dict) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of a well-formed sample; consecutive same-tag items are merged
    with no separator, as ERNIEKit's reader does."""
    turns: list[list[str]] = []
    last = None
    for item in sample["text_info"]:
        if item["tag"] == last:
            turns[-1][-1] += item["text"]
        elif item["tag"] == MASK:
            turns.append([item["text"], ""])
        else:
            turns[-1][1] = item["text"]
        last = item["tag"]
    return [(p, a) for p, a in turns]


def image_urls(sample: dict) -> list[str]:
    return [info["image_url"] for info in sample["image_info"]]


def is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def resolve_image(url: str, dataset_path: str | os.PathLike) -> Path:
    """Where ERNIEKit looks for a local image: relative paths are joined to the dataset file's dir."""
    return Path(os.path.join(os.path.dirname(os.path.abspath(dataset_path)), url))


def image_location(url: str, dataset_path: str | os.PathLike) -> str:
    """What an image_url points at: the URL itself, or the resolved local path (as a string)."""
    return url if is_remote(url) else str(resolve_image(url, dataset_path))


def relocate_image(url: str, src_dataset: str | os.PathLike, dst_dataset: str | os.PathLike,
                   image_root: str | os.PathLike | None = None) -> str:
    """Rewrite a relative image path so it still resolves when the sample moves to ``dst_dataset``.

    The path is relative to ``image_root`` when given, else to ``src_dataset``'s directory.
    Absolute paths and URLs are returned unchanged.
    """
    if is_remote(url) or os.path.isabs(url):
        return url
    # os.path, not pathlib: Path interns every part of every path (sys.intern), which grows the
    # interpreter's table of interned strings with the number of distinct image names converted
    base = os.path.abspath(image_root) if image_root else os.path.dirname(os.path.abspath(src_dataset))
    dst_dir = os.path.dirname(os.path.abspath(dst_dataset))
    return os.path.relpath(os.path.join(base, url), dst_dir)
