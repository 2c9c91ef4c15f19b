"""Shared test helpers: tiny images and datasets written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def backend_home():
    """Trainer environments built by tests go to REPO/.backends (kept between runs: `backend install`
    is a no-op for an unchanged lock), never to the user's ~/.cache; $PADDLE_OCRVL_SFT_HOME wins."""
    import os

    os.environ.setdefault("PADDLE_OCRVL_SFT_HOME", str(REPO / ".backends"))
    return Path(os.environ["PADDLE_OCRVL_SFT_HOME"])


@pytest.fixture(scope="session")
def installed(backend_home) -> list[str]:
    """Both trainers' environments, built once (a no-op when the same lock is installed); ERNIEKit's
    only where its source is found."""
    from paddle_ocrvl_sft.backends import envs
    from paddle_ocrvl_sft.testing import erniekit_source

    source = erniekit_source()
    names = ["paddleformers"] + (["erniekit"] if source else [])
    for name in names:
        envs.install(name, source=source if name == "erniekit" else None, log=lambda line: None)
    return names


def need(installed: list[str], name: str) -> None:
    if name not in installed:
        pytest.skip(f"{name}: no ERNIEKit source (set ERNIEKIT_SRC or place ../shared/vendor/ERNIE-*.tar.gz)")


def write_image(path: Path, size=(120, 80), color="white", fmt=None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def sample(url="img.png", prompt="OCR:", answer="text", index=0) -> dict:
    return {
        "image_info": [{"matched_text_index": index, "image_url": url}],
        "text_info": [{"text": prompt, "tag": "mask"}, {"text": answer, "tag": "no_mask"}],
    }


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            fh.write("\n")
    return path


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A dir with img.png (120x80) ready for samples that point at it."""
    write_image(tmp_path / "img.png")
    return tmp_path
