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


# --- what the stages take from here --------------------------------------------------------------------


def _paddlex_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("paddlex")
    if spec is None:
        pytest.skip("paddlex is not installed ([infer] installs it; CI has it)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.mark.parametrize("name", ["v1.5", "v1.6"])
def test_packaged_1_5_and_1_6_templates_are_paddlex_own(name):
    """PaddleX ships the chat template of each model it serves (genai/chat_templates/<model>.jinja):
    the 1.5/1.6 templates this package carries (reconstructed, shared/reference/MODEL_VERSIONS.md)
    are byte for byte PaddleX's."""
    release = releases.get(name)
    theirs = _paddlex_dir() / "inference" / "genai" / "chat_templates" / f"{release.paddlex_model_name}.jinja"
    assert (release.resource_dir / "chat_template.jinja").read_bytes() == theirs.read_bytes()


def test_v1_template_renders_what_paddlex_own_v1_template_renders():
    """PaddleX's v1 template inlines the image string (the released one names it image_token): the
    same prompt, so the same marker."""
    theirs = (_paddlex_dir() / "inference" / "genai" / "chat_templates" / "PaddleOCR-VL-0.9B.jinja").read_text()
    ours = (releases.get("v1").resource_dir / "chat_template.jinja").read_text()
    for text in ("OCR:", 'OCR:{"TOTAL": ""}', "Spotting:"):
        assert releases.render_generation_prompt(ours, text) == releases.render_generation_prompt(theirs, text)
    assert releases.template_marker(theirs) == "\nAssistant: "


@pytest.mark.slow
def test_pipeline_versions_pick_the_paddlex_pipelines_paddleocr_picks():
    import types

    paddleocr_vl = pytest.importorskip("paddleocr._pipelines.paddleocr_vl")
    for release in releases.RELEASES.values():
        chosen = paddleocr_vl.PaddleOCRVL._paddlex_pipeline_name.fget(types.SimpleNamespace(pipeline_version=release.pipeline_version))
        assert chosen == release.paddlex_pipeline
    assert releases.doc_parser_args(releases.get("v1.5")) == [
        "--pipeline_version", "v1.5", "--vl_rec_model_name", "PaddleOCR-VL-1.5-0.9B"]


@pytest.mark.parametrize("name", releases.NAMES)
def test_bundle_model_name_is_the_release_name(tmp_path, name):
    bundle = build_tiny_model(tmp_path / name, release=name)
    model_name, detection = releases.bundle_model_name(bundle)
    assert model_name == releases.get(name).paddlex_model_name and detection.release.name == name
    assert releases.bundle_model_name(bundle, name)[0] == model_name  # --release that agrees
    (bundle / "inference.yml").unlink()  # an hf bundle without it: the release names the model
    if name == "v1":
        assert releases.bundle_model_name(bundle)[0] == "PaddleOCR-VL-0.9B"


def test_bundle_model_name_refuses_what_paddlex_would_refuse(tmp_path):
    bundle = build_tiny_model(tmp_path / "b", release="v1.6")
    with pytest.raises(UserError, match=r"inference.yml: model_name PaddleOCR-VL-1.6-0.9B, not PaddleOCR-VL-1.5-0.9B "
                                        r"\(--release v1.5\).*--release v1.5`"):
        releases.bundle_model_name(bundle, "v1.5")
    (bundle / "inference.yml").write_text("Global:\n  model_name: PaddleOCR-VL\n")  # a name no release has
    with pytest.raises(UserError, match="name no single PaddleOCR-VL release"):
        releases.bundle_model_name(bundle)


def test_detection_records_and_lines(tmp_path):
    detection = releases.detect(releases.get("v1.5").resource_dir)
    assert detection.to_record() == {"name": "v1.5", "evidence": detection.evidence, "notes": [], "given": False}
    assert releases.Detection.from_record(detection.to_record()) == detection
    assert detection.describe().startswith("v1.5 (PaddleOCR-VL-1.5): chat_template.jinja: ends the user turn with")
    empty = tmp_path / "empty"
    empty.mkdir()
    given = releases.detect(empty, "v1.6")
    assert given.describe() == "v1.6 (PaddleOCR-VL-1.6): --release (the files: no file names it)"
    assert given.notes == [f"--release v1.6: {empty} has no file that names a release"]
    assert releases.Detection.from_record(given.to_record()).describe() == given.describe()
    run = build_tiny_model(tmp_path / "run", "erniekit_output", release="v1.5", checkpoints=())
    with pytest.raises(releases.AmbiguousRelease):
        releases.detect(run)
    assert releases.of_plan({"release": {"name": "v1.6", "evidence": [], "notes": []}}) is releases.get("v1.6")
    assert releases.of_plan({"backend": "erniekit"}) is None  # a plan from before releases were recorded
