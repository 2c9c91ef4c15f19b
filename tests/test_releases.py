"""Release detection on the released file sets, tiny models of each release, and mixed/unknown dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from paddle_ocrvl_sft import releases
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.testing import build_tiny_model

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
FILE_SETS = {"v1": "PaddleOCR-VL-0.9B-files", "v1.5": "PaddleOCR-VL-1.5-files", "v1.6": "PaddleOCR-VL-1.6-files"}


def test_packaged_files_are_the_reference_files():
    """resources/ carries the release files byte for byte (shared/reference is not in a wheel)."""
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is not beside this checkout (it is in CI and in the dev tree)")
    for name, folder in FILE_SETS.items():
        for path in (REFERENCE / folder).iterdir():
            packaged = releases.get(name).resource_dir / path.name
            assert packaged.read_bytes() == path.read_bytes(), packaged


@pytest.mark.parametrize("name", releases.NAMES)
def test_detects_each_release_from_its_released_files(name):
    detection = releases.detect(releases.get(name).resource_dir)
    assert detection.release.name == name
    assert any(e.startswith("inference.yml") for e in detection.evidence)


@pytest.mark.parametrize("name", releases.NAMES)
def test_detects_tiny_models_of_each_release(tmp_path, name):
    model = build_tiny_model(tmp_path / name, release=name)
    assert releases.detect(model).release.name == name
    out = build_tiny_model(tmp_path / f"{name}-run", "erniekit_output", release=name, checkpoints=(1,))
    # a trainer's output has no chat template or inference.yml: only the pixel bounds speak
    if name == "v1":
        assert releases.detect(out).release.name == "v1"
    else:
        with pytest.raises(UserError, match=r"could be any of v1\.5, v1\.6 .*pass --release v1\.5\|v1\.6"):
            releases.detect(out)
        assert releases.detect(out, "1.6").release.name == "v1.6"


def test_markers_are_what_the_templates_render():
    v1 = releases.render_generation_prompt((releases.get("v1").resource_dir / "chat_template.jinja").read_text())
    v15 = releases.render_generation_prompt((releases.get("v1.5").resource_dir / "chat_template.jinja").read_text())
    assert v1 == "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:\nAssistant: "
    assert v15 == "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:\nAssistant:\n"


def _mixed(tmp_path: Path, template_from: str, rest_from: str) -> Path:
    d = tmp_path / "mixed"
    shutil.copytree(releases.get(rest_from).resource_dir, d)
    shutil.copyfile(releases.get(template_from).resource_dir / "chat_template.jinja", d / "chat_template.jinja")
    return d


def test_contradictory_dir_is_refused_with_what_was_seen(tmp_path):
    d = _mixed(tmp_path, "v1", "v1.5")
    with pytest.raises(UserError) as err:
        releases.detect(d)
    message = str(err.value)
    assert "name no single PaddleOCR-VL release" in message
    assert "'\\nAssistant: '" in message and "112896/1003520" in message and "PaddleOCR-VL-1.5-0.9B" in message
    # --release overrides, and says what it overrode
    detection = releases.detect(d, "v1.5")
    assert detection.release.name == "v1.5" and "overrides" in detection.notes[0]


def test_unknown_template_and_empty_dir_are_refused(tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    with pytest.raises(UserError, match="cannot tell which PaddleOCR-VL release"):
        releases.detect(d)
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    with pytest.raises(UserError, match="does not render the PaddleOCR-VL prompt"):
        releases.detect(d)


def test_template_in_tokenizer_config_and_custom_bounds(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    template = (releases.get("v1").resource_dir / "chat_template.jinja").read_text()
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    processor = json.loads((releases.get("v1").resource_dir / "preprocessor_config.json").read_text())
    processor.update(min_pixels=1000, max_pixels=2000000, size={"min_pixels": 1000, "max_pixels": 2000000})
    (d / "preprocessor_config.json").write_text(json.dumps(processor))
    detection = releases.detect(d)
    assert detection.release.name == "v1"
    assert "1000/2000000 are no release's" in detection.notes[0]


def test_release_names_and_task_notes():
    assert releases.get("1.5") is releases.get("v1.5")
    with pytest.raises(UserError, match="unknown release"):
        releases.get("v2")
    assert releases.task_prompt_release_note("Spotting:", releases.get("v1")).startswith("prompt 'Spotting:'")
    assert releases.task_prompt_release_note("Spotting:", releases.get("v1.6")) is None
    assert releases.task_prompt_release_note('OCR:{"a": ""}', releases.get("v1")) is None
