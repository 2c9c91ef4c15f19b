"""export: an ERNIEKit output dir becomes a bundle paddleocr doc_parser / PaddleX / transformers load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_ocrvl_sft import cli, releases
from paddle_ocrvl_sft.bundle import INDEX, WEIGHTS
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.export import export
from paddle_ocrvl_sft.safetensors_file import merge_safetensors, read_header, tensor_specs, write_safetensors
from paddle_ocrvl_sft.testing import SHARD, build_tiny_model, receipt_image

MODEL_NAME = "PaddleOCR-VL-0.9B"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(base, run) built once for this module; tests must not write into them."""
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "base", "base"), build_tiny_model(root / "run", "erniekit_output")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """The run exported in paddle format once, verification on (PaddleX loads it)."""
    base, run = tiny
    out = tmp_path_factory.mktemp("exp") / "bundle"
    report = export(run, base, out)
    return out, report


@pytest.fixture(scope="module")
def receipt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "receipt.png"
    receipt_image({"total": "12.50", "date": "2024-01-02"}).save(path)
    return path


def snapshot(*roots: Path) -> dict[str, tuple]:
    return {str(p): (p.stat().st_mode, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def tensor_bytes(path: Path) -> dict[str, bytes]:
    header = read_header(path)
    raw = path.read_bytes()
    start = 8 + int.from_bytes(raw[:8], "little")
    return {k: raw[start + v["data_offsets"][0] : start + v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}


def doc_parser(image: Path, model_dir: Path, save: Path, release_args=("--vl_rec_model_name", MODEL_NAME)) -> subprocess.CompletedProcess:
    """The real CLI, offline, layout detection off (FACTS: paddleocr 3.7 needs --vl_rec_model_name)."""
    exe = Path(sys.executable).with_name("paddleocr")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "paddleocr"]
    cmd += ["doc_parser", "-i", str(image), "--vl_rec_model_dir", str(model_dir), *release_args,
            "--use_layout_detection", "False", "--device", "cpu", "--max_new_tokens", "8", "--save_path", str(save)]
    env = {**os.environ, "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


# --- the two must-shows ---------------------------------------------------------------------------


@pytest.mark.slow
def test_doc_parser_runs_on_the_exported_erniekit_dir(exported, receipt, tmp_path):
    out, report = exported
    proc = doc_parser(receipt, out, tmp_path / "res")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = (tmp_path / "res").glob("*_res.json")
    blocks = json.loads(res.read_text())["parsing_res_list"]
    assert len(blocks) == 1 and blocks[0]["block_label"] == "ocr"
    assert blocks[0]["block_content"]  # the tiny random model answered something
    assert report.verified and "PaddleX" in report.verified[0]


@pytest.mark.slow
def test_doc_parser_fails_on_the_unexported_run_dir(tiny, receipt, tmp_path):
    _, run = tiny
    proc = doc_parser(receipt, run, tmp_path / "res")
    assert proc.returncode != 0
    assert "FileNotFoundError" in proc.stderr and f"{run}/inference.yml" in proc.stderr


@pytest.mark.slow
def test_paddlex_errors_that_export_fixes(tiny, tmp_path):
    """Adding only the inference files is not enough (FACTS, PaddleX >= 3.5); renaming the shard
    leaves a stale index (PaddleX #5012). export handles both states of a run dir."""
    from paddle_ocrvl_sft.predict import paddle_predictor

    base, run = tiny
    half = tmp_path / "half"
    shutil.copytree(run, half, ignore=shutil.ignore_patterns("checkpoint-*"))
    shutil.copy(base / "chat_template.jinja", half)
    shutil.copy(base / "inference.yml", half)
    with pytest.raises(UserError, match="No Paddle model files were found"):
        paddle_predictor(half)

    os.rename(half / SHARD, half / WEIGHTS)  # the common manual fix, index kept
    with pytest.raises(UserError, match=f"No such file or directory: {half}/{SHARD}"):
        paddle_predictor(half)

    report = export(half, base, tmp_path / "fixed")
    assert any("ignored stale model.safetensors.index.json" in line for line in report.changes)
    assert report.verified


# --- what export writes ---------------------------------------------------------------------------


def test_export_adds_inference_files_links_the_shard_and_touches_no_input(tiny, tmp_path):
    base, run = tiny
    before = snapshot(base, run)
    out = tmp_path / "bundle"
    report = export(run, base, out, verify=False)
    assert snapshot(base, run) == before
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "added_tokens.json", "chat_template.jinja", "config.json", "generation_config.json", "inference.yml",
        "model.safetensors", "preprocessor_config.json", "processor_config.json", "special_tokens_map.json",
        "tokenizer.model", "tokenizer_config.json"])
    assert (out / "inference.yml").read_text() == f"Global:\n  model_name: {MODEL_NAME}\n"
    assert (out / "chat_template.jinja").read_bytes() == (base / "chat_template.jinja").read_bytes()
    assert (out / "config.json").read_bytes() == (run / "config.json").read_bytes()  # the run's own
    assert os.path.samefile(out / WEIGHTS, run / SHARD)  # hard link: no copy, original shard kept
    assert (run / SHARD).is_file() and (run / INDEX).is_file()
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # shareable, not mkdtemp's private mode
    text = "\n".join(report.changes)
    assert "added chat_template.jinja (from BASE/chat_template.jinja)" in text
    assert "hard link to RUN/model-00001-of-00001.safetensors" in text
    assert f"left out {INDEX}" in text


@pytest.fixture(scope="module")
def tiny_releases(tmp_path_factory):
    """(base, run) of a tiny 1.5 and 1.6 model (the 1.5/1.6 files on the v1 config and tokenizer)."""
    root = tmp_path_factory.mktemp("tiny_releases")
    return {name: (build_tiny_model(root / name / "base", release=name),
                   build_tiny_model(root / name / "run", "erniekit_output", release=name, checkpoints=(1,)))
            for name in ("v1.5", "v1.6")}


@pytest.mark.parametrize("name", ["v1.5", "v1.6"])
def test_inference_yml_names_the_model_of_the_base_release(tiny_releases, tmp_path, name):
    """A 1.5/1.6 base gives a bundle PaddleX and doc_parser --pipeline_version v1.5/v1.6 load under the
    release's name (the export wrote PaddleOCR-VL-0.9B for every base before)."""
    base, run = tiny_releases[name]
    report = export(run, base, tmp_path / "b", verify=False)
    expected = releases.get(name).paddlex_model_name
    assert (tmp_path / "b" / "inference.yml").read_text() == f"Global:\n  model_name: {expected}\n"
    assert (report.release, report.model_name) == (name, expected)
    assert releases.detect(tmp_path / "b").release.name == name  # the bundle's files agree with each other


def test_model_name_must_be_the_release_name(tiny, tiny_releases, tmp_path, capsys):
    base, run = tiny
    export(run, base, tmp_path / "same", verify=False, model_name=MODEL_NAME)  # repeating the release's name is fine
    with pytest.raises(UserError, match=r"--model-name PaddleOCR-VL-1\.5-0\.9B is release v1\.5's name, but BASE is "
                                        r"release v1 .*pass --release v1\.5"):
        export(run, base, tmp_path / "b", verify=False, model_name="PaddleOCR-VL-1.5-0.9B")
    with pytest.raises(UserError, match="--model-name PaddleOCR-VL: not a PaddleOCR-VL model name PaddleX knows"):
        export(run, base, tmp_path / "b", verify=False, model_name="PaddleOCR-VL")
    assert not (tmp_path / "b").exists()
    base15, run15 = tiny_releases["v1.5"]
    out = tmp_path / "cli"
    assert cli.main(["export", str(run15), "--base", str(base15), "-o", str(out), "--no-verify"]) == 0
    printed = capsys.readouterr().out
    assert "release v1.5 (PaddleOCR-VL-1.5): chat_template.jinja" in printed
    assert (f"run it: paddleocr doc_parser -i IMAGE --vl_rec_model_dir {out} --pipeline_version v1.5 "
            "--vl_rec_model_name PaddleOCR-VL-1.5-0.9B --use_layout_detection False") in printed


def test_release_override_names_the_model_and_says_what_it_overrode(tiny, tmp_path):
    base, run = tiny
    lines = []
    report = export(run, base, tmp_path / "b", verify=False, release="v1.6", log=lines.append)
    assert report.model_name == "PaddleOCR-VL-1.6-0.9B"
    assert any(line.startswith("note: --release v1.6 overrides what") for line in lines)


@pytest.mark.slow
def test_doc_parser_runs_a_1_5_bundle_with_its_pipeline_version(tiny_releases, receipt, tmp_path):
    """The real CLI on a 1.5 bundle, with the options export prints (pipeline v1.5, the 1.5 model name)."""
    base, run = tiny_releases["v1.5"]
    report = export(run, base, tmp_path / "bundle")
    assert "PaddleX PaddleOCR-VL-1.5-0.9B predictor loaded it" in report.verified[0]
    proc = doc_parser(receipt, report.out, tmp_path / "res", releases.doc_parser_args(releases.get("v1.5")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = (tmp_path / "res").glob("*_res.json")
    assert json.loads(res.read_text())["parsing_res_list"][0]["block_label"] == "ocr"


def test_existing_out_is_refused_without_force_and_replaced_with_it(tiny, tmp_path, capsys):
    base, run = tiny
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", str(run), "--base", str(base), "-o", str(out), "--no-verify"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists (use --force" in err and "Traceback" not in err
    assert (out / "keep.txt").read_text() == "mine"
    assert cli.main([*argv, "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / WEIGHTS).is_file()
    printed = capsys.readouterr().out
    assert "added inference.yml" in printed and f"--vl_rec_model_dir {out}" in printed


def test_out_inside_an_input_dir_is_refused(tiny):
    base, run = tiny
    with pytest.raises(UserError, match="inside RUN_DIR"):
        export(run, base, run / "export", verify=False)
    assert not (run / "export").exists()


def test_out_that_is_or_contains_an_input_dir_is_refused_even_with_force(tiny, tmp_path, capsys):
    """Regression: `-o proj --force` for proj/run + proj/base replaced proj, deleting both."""
    base, run = tiny
    proj = tmp_path / "proj"
    shutil.copytree(run, proj / "run", ignore=shutil.ignore_patterns("checkpoint-*"), copy_function=os.link)
    shutil.copytree(base, proj / "base", copy_function=os.link)
    before = snapshot(proj)
    for out, why in ((proj, "contains RUN_DIR"), (tmp_path, "contains RUN_DIR"), (proj / "run", "is RUN_DIR"),
                     (proj / "base", "is --base"), (proj / "base" / "x", "inside --base")):
        argv = ["export", str(proj / "run"), "--base", str(proj / "base"), "-o", str(out), "--force", "--no-verify"]
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: -o {out}: {why} ") and "which export never modifies" in err
    # only BASE inside OUT, written with "..": the check is on resolved paths
    with pytest.raises(UserError, match=f"-o {proj}: contains --base {proj / 'base'},"):
        export(run, proj / "base", proj / "base" / "..", force=True, verify=False)
    assert snapshot(proj) == before and sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


def test_checkpoint_selection(tiny, tmp_path):
    base, run = tiny
    export(run, base, tmp_path / "c5", checkpoint="5", verify=False)
    assert (tmp_path / "c5" / WEIGHTS).read_bytes() == (run / "checkpoint-5" / SHARD).read_bytes()
    export(run, base, tmp_path / "last", checkpoint="last", verify=False)
    assert os.path.samefile(tmp_path / "last" / WEIGHTS, run / "checkpoint-10" / SHARD)
    report = export(run, base, tmp_path / "all", checkpoint="all", verify=False)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["checkpoint-10", "checkpoint-5"]
    assert (tmp_path / "all" / "checkpoint-5" / "chat_template.jinja").is_file()
    assert any(line.startswith("checkpoint-5/added inference.yml") for line in report.changes)
    with pytest.raises(UserError, match=r"--checkpoint 7: not found .* \(complete: 5, 10; or last, all\)"):
        export(run, base, tmp_path / "x", checkpoint="7", verify=False)


def test_default_out_is_beside_the_run_dir(tiny, tmp_path):
    base, run = tiny
    work = tmp_path / "runs" / "exp1"
    shutil.copytree(run / "checkpoint-5", work)
    report = export(work, base, verify=False)
    assert report.out == tmp_path / "runs" / "exp1-export-paddle" and (report.out / WEIGHTS).is_file()


def test_several_shards_are_merged_byte_for_byte(tiny, tmp_path):
    base, run = tiny
    src = tmp_path / "sharded"
    shutil.copytree(run, src, ignore=shutil.ignore_patterns("checkpoint-*", SHARD, INDEX))
    original = tensor_bytes(run / SHARD)
    specs = tensor_specs(read_header(run / SHARD))
    names = sorted(original)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        write_safetensors(src / shard, {k: (specs[k][0], specs[k][1], original[k]) for k in keys}, {"format": "np"})
    (src / INDEX).write_text(json.dumps({"weight_map": {k: s for s, keys in halves.items() for k in keys}}))
    report = export(src, base, tmp_path / "out", verify=False)
    assert tensor_bytes(tmp_path / "out" / WEIGHTS) == original
    assert tensor_specs(read_header(tmp_path / "out" / WEIGHTS)) == specs
    assert any("merged 2 shards" in line for line in report.changes)


def test_merge_opens_a_shard_a_fixed_number_of_times_whatever_it_holds(tmp_path, monkeypatch):
    """Files are opened per shard (header, copy), not per tensor: hundreds of tensors stay a few opens,
    and every handle is closed."""
    import builtins

    import numpy as np

    from paddle_ocrvl_sft import safetensors_file

    opened = []

    def spy(path, *args, **kwargs):
        fh = builtins.open(path, *args, **kwargs)
        opened.append((Path(path), fh))
        return fh

    monkeypatch.setattr(safetensors_file, "open", spy, raising=False)
    counts = []
    for n in (2, 200):  # tensors per shard
        shards = [tmp_path / f"{n}-{i}.safetensors" for i in range(2)]
        for i, shard in enumerate(shards):
            write_safetensors(shard, {f"s{i}.t{k}": ("F32", (2,), np.full(2, k, np.float32).tobytes()) for k in range(n)})
        opened.clear()
        merge_safetensors(shards, tmp_path / f"merged-{n}.safetensors")
        assert len(tensor_bytes(tmp_path / f"merged-{n}.safetensors")) == 2 * n
        counts.append([sum(p == shard for p, _ in opened) for shard in shards])
        assert all(fh.closed for _, fh in opened)
    assert counts[0] == counts[1] and max(counts[0]) <= 3, counts


def test_merge_refuses_a_truncated_shard(tiny, tmp_path):
    _, run = tiny
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((run / SHARD).read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        merge_safetensors([cut], tmp_path / "merged.safetensors")


def test_weights_that_do_not_match_the_base_are_refused(tiny, tmp_path):
    base, run = tiny
    other = tmp_path / "other_base"
    shutil.copytree(base, other)
    raw = tensor_bytes(base / WEIGHTS)
    specs = tensor_specs(read_header(base / WEIGHTS))
    keep = [k for k in specs if k != "model.norm.weight"]
    write_safetensors(other / WEIGHTS, {k: (*specs[k], raw[k]) for k in keep})
    with pytest.raises(UserError, match=r"do not match --base .*unexpected: model.norm.weight"):
        export(run, other, tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()


def test_run_dir_without_weights_is_a_clear_error(tiny, tmp_path, capsys):
    base, _ = tiny
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert cli.main(["export", str(empty), "--base", str(base), "--no-verify"]) == 1
    assert "no model weights (expected model.safetensors.index.json + shards or model.safetensors)" in capsys.readouterr().err


# --- hf format ------------------------------------------------------------------------------------


def test_released_flat_config_loads_tied_in_transformers_and_the_hf_export_unties_it(tiny, tmp_path):
    """Why --format hf rewrites config.json: transformers 5 ties lm_head for the flat released file."""
    from transformers import PaddleOCRVLConfig

    base, run = tiny
    assert json.loads((base / "config.json").read_text())["tie_word_embeddings"] is False
    assert PaddleOCRVLConfig.from_pretrained(str(base)).tie_word_embeddings is True
    export(run, base, tmp_path / "hf", fmt="hf", verify=False)
    cfg = PaddleOCRVLConfig.from_pretrained(str(tmp_path / "hf"))
    assert cfg.tie_word_embeddings is False and cfg.text_config.tie_word_embeddings is False
    assert cfg.text_config.hidden_size == 32 and cfg.vision_config.hidden_size == 32


@pytest.mark.slow
def test_hf_export_loads_with_transformers_and_generates(tiny, exported, receipt, tmp_path):
    import torch
    from PIL import Image

    from paddle_ocrvl_sft.predict import Job, PaddleBackend, hf_generate, load_hf

    base, run = tiny
    out = tmp_path / "hf"
    report = export(run, base, out, fmt="hf")  # verification on: transformers loads it
    assert "transformers loaded it" in report.verified[0]
    assert (out / WEIGHTS).read_bytes() == (run / SHARD).read_bytes()
    assert json.loads((out / "tokenizer_config.json").read_text())["extra_special_tokens"]["image_token"] == "<|IMAGE_PLACEHOLDER|>"

    model, processor = load_hf(out)
    fine_tuned = tensor_bytes(run / SHARD)["lm_head.weight"]
    as_bf16 = model.lm_head.weight.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    assert as_bf16 == fine_tuned
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)
    with Image.open(receipt) as image:
        text = hf_generate(model, processor, image.convert("RGB"), "OCR:", max_new_tokens=4)
    assert text

    # Same weights, same greedy decoding: PaddleX on the paddle export says the same thing.
    paddle_text = PaddleBackend(exported[0], device="cpu", max_new_tokens=4)(Job(str(receipt), "OCR:"))
    assert paddle_text.replace(" ", "") == text.replace(" ", "")


@pytest.mark.slow
def test_a_bundle_that_does_not_load_is_not_written(tiny, tmp_path, capsys):
    base, run = tiny
    broken = tmp_path / "broken_run"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("checkpoint-*"))
    (broken / "config.json").write_text('{"architectures": ["PaddleOCRVLForConditionalGeneration"]')  # cut short
    out = tmp_path / "out"
    assert cli.main(["export", str(broken), "--base", str(base), "-o", str(out)]) == 1
    assert "error: verification failed: PaddleX could not load/run the bundle" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # staged dir cleaned up
