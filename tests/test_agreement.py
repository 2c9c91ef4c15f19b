"""Train/inference prompt agreement (agreement.py): the trainers' own data code against PaddleX's.

The slow tests build each trainer's real environment (`backend install`: PaddleFormers 1.2.0 from
PyPI, ERNIEKit from $ERNIEKIT_SRC or ../shared/vendor/ERNIE-*.tar.gz) and tiny random-weight
models of the three releases; nothing is downloaded.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import need

from paddle_ocrvl_sft import agreement, augment, releases
from paddle_ocrvl_sft.agreement import Disagreement, Tokens
from paddle_ocrvl_sft.backends import envs, erniekit_marker_hook, paddleformers_template
from paddle_ocrvl_sft.backends.training_input import loss_tokens
from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.sample import make_sample
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.export import export, probe_image
from paddle_ocrvl_sft.prompts import kie_prompt, render_json
from paddle_ocrvl_sft.testing import build_tiny_model, erniekit_source, receipt_image

IMAGE = 100295  # <|IMAGE_PLACEHOLDER|>
MARKER_MODULE = "data_processor/steps/input_ids_messaging/chat_template_utils.py"


# --- the comparison, on token lists ---------------------------------------------------------------


class FakeNamer:
    image_id = IMAGE

    def __call__(self, token):
        return repr({IMAGE: "<|IMAGE_PLACEHOLDER|>", 1: "<s>", 7: "\n", 8: " "}.get(token, f"t{token}"))


SAMPLE = agreement.Sample("train.jsonl:1", "train.jsonl", 0, "a.png", "OCR:")


def test_labels_of_both_layouts_become_the_trained_token_positions():
    ids = [5, 6, 7, 9, 9]
    assert loss_tokens(ids, [-100, -100, 9, 9, -100], shifted=True) == [3, 4]  # PaddleFormers: label i is token i+1
    assert loss_tokens(ids, [-100, -100, -100, 9, 9], shifted=False) == [3, 4]  # ERNIEKit: label i is token i
    with pytest.raises(RuntimeError, match="labels do not match the token ids"):
        loss_tokens(ids, [-100, -100, -100, 9, 9], shifted=True)


def test_token_ids_round_trip_as_compact_text():
    ids = [100273, 384, *[IMAGE] * 168, 101306, 7, 7]
    assert agreement.encode_ids(ids) == "100273 384 100295*168 101306 7 7"
    assert agreement.decode_ids(agreement.encode_ids(ids)) == ids


def test_equal_prompts_with_loss_from_the_answer_agree():
    training = Tokens([2, 3, IMAGE, IMAGE, 4, 7, 50, 51], "trainer", loss=[6, 7])
    agreement.compare(training, Tokens([2, 3, IMAGE, IMAGE, 4, 7], "paddlex"), FakeNamer(), SAMPLE)


def test_another_marker_is_shown_side_by_side_with_the_first_difference_marked():
    training = Tokens([2, 3, *[IMAGE] * 20, 4, 8, 50, 51], "trainer", loss=[24, 25])
    inference = Tokens([2, 3, *[IMAGE] * 20, 4, 7], "paddlex")
    with pytest.raises(Disagreement) as caught:
        agreement.compare(training, inference, FakeNamer(), SAMPLE)
    text = str(caught.value)
    assert text.startswith("prompt agreement FAILED: the token ids differ from position 23")
    assert "image tokens: training 20, inference 20; prompt tokens: training 24, inference 24" in text
    assert "2-21  100295 '<|IMAGE_PLACEHOLDER|>' x20" in text  # a run of placeholders is one row
    (marked,) = [line for line in text.splitlines() if line.lstrip().startswith(">>")]
    assert "23  8 ' '" in marked and "23  7 '\\n'" in marked
    assert "24  50 't50' *" in text and "(the model answers from here)" in text


def test_a_leading_token_is_aligned_not_shifted():
    training = Tokens([2, 3, IMAGE, 4, 7, 50], "trainer", loss=[5])
    with pytest.raises(Disagreement) as caught:
        agreement.compare(training, Tokens([1, 2, 3, IMAGE, 4, 7], "paddlex"), FakeNamer(), SAMPLE)
    rows = str(caught.value).splitlines()
    first = next(i for i, line in enumerate(rows) if line.lstrip().startswith(">>"))
    assert rows[first].split() == [">>", "0", "1", "'<s>'"]  # only on the inference side
    assert rows[first + 1].split()[:3] == ["0", "2", "'t2'"] and rows[first + 1].split()[3:5] == ["1", "2"]


def test_loss_that_starts_before_the_answer_is_a_disagreement():
    training = Tokens([2, 3, IMAGE, 4, 7, 50], "trainer", loss=[4, 5])  # the marker's last token is trained on
    with pytest.raises(Disagreement, match="training's loss starts at token 4, but the inference prompt is 5 tokens long"):
        agreement.compare(training, Tokens([2, 3, IMAGE, 4, 7], "paddlex"), FakeNamer(), SAMPLE)


def test_paths_of_the_plan_being_written_point_into_its_staging_dir(tmp_path):
    plan, stage = tmp_path / "plan", tmp_path / ".plan.tmp"
    config = {"train_dataset_path": f"{plan}/data/a.jsonl,{plan}/data/b.jsonl", "model_name_or_path": str(plan / "model"),
              "other": "/elsewhere/x", "n": 3, "env": {"PYTHONPATH": str(plan / "trainer_hooks")}}
    assert agreement.relocate(config, plan, stage) == {
        "train_dataset_path": f"{stage}/data/a.jsonl,{stage}/data/b.jsonl", "model_name_or_path": str(stage / "model"),
        "other": "/elsewhere/x", "n": 3, "env": {"PYTHONPATH": str(stage / "trainer_hooks")}}


def test_the_checked_sample_is_the_first_valid_one_image_sample(tmp_path):
    from tests.conftest import sample, write_image, write_jsonl

    write_image(tmp_path / "imgs" / "a.png")
    two_images = make_sample(["imgs/a.png", "imgs/a.png"], [("OCR:", "x")])
    data = write_jsonl(tmp_path / "train.jsonl", [sample("imgs/missing.png"), two_images,
                                                   sample("imgs/a.png", prompt="Table Recognition:")])
    found = agreement.first_sample(data)
    assert (found.where, found.index, found.prompt) == (f"{data}:3", 2, "Table Recognition:")
    assert found.image == str(tmp_path / "imgs" / "a.png") and found.path == str(data.resolve())
    with pytest.raises(UserError, match="no valid one-image sample"):
        agreement.first_sample(write_jsonl(tmp_path / "bad.jsonl", [two_images]))


def stand_in_trainer(tmp_path, script: str) -> envs.TrainerEnv:
    """A trainer environment whose "Python" is the shell ``script`` (it ignores the probe's arguments)."""
    python = tmp_path / "trainer" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    return envs.TrainerEnv("erniekit", python, python.parent, "a stand-in")


def test_the_probe_has_only_this_package_then_the_plans_and_the_users_pythonpath(tmp_path, monkeypatch):
    """Not the dir above the package: for a regular install that is site-packages, whose transformers/
    numpy/yaml would shadow the trainer's own (as `train` launches it: train.command_for)."""
    monkeypatch.setenv(envs.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("PYTHONPATH", "/the/users/path")
    seen = tmp_path / "pythonpath"
    trainer = stand_in_trainer(tmp_path, f'printf %s "$PYTHONPATH" > {seen}\n')
    with pytest.raises(UserError, match="no result"):
        agreement.training_input("erniekit", trainer, tmp_path / "config.yaml", "train.jsonl", 0,
                                 {"PYTHONPATH": "/plan/trainer_hooks"})
    first, *rest = seen.read_text().split(os.pathsep)
    assert [first, *rest] == [str(envs.project_path()), "/plan/trainer_hooks", "/the/users/path"]
    assert sorted(p.name for p in Path(first).iterdir()) == ["paddle_ocrvl_sft"]


def test_a_failing_paddlex_side_stops_the_trainer_probe_at_once(tmp_path, monkeypatch):
    """The trainer's probe may take minutes (up to PROBE_TIMEOUT): when PaddleX's side fails, its
    result is not needed and the check returns with PaddleX's error, the probe killed."""
    from tests.conftest import sample, write_image, write_jsonl

    monkeypatch.setenv(envs.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setattr(agreement, "PROBE_TIMEOUT", 120)
    write_image(tmp_path / "a.png")
    data = write_jsonl(tmp_path / "train.jsonl", [sample("a.png")])
    started = tmp_path / "started"
    os.mkfifo(started)
    trainer = stand_in_trainer(tmp_path, f"echo $$ > {started}\nexec sleep 600\n")  # a probe that takes long

    def paddlex_fails(*args, **kwargs):
        pid.append(int(started.read_text()))  # blocks until the probe has started: the kill is what is tested
        raise UserError("PaddleX cannot build its inference input: stand-in failure")

    pid: list[int] = []
    monkeypatch.setattr(agreement, "paddlex_input", paddlex_fails)
    monkeypatch.setattr(agreement, "_release_of", lambda record, base: releases.get("v1"))
    record = {"model": str(tmp_path / "base"), "datasets": {"train": [{"path": str(data)}]}}
    began = __import__("time").monotonic()
    with pytest.raises(UserError, match="stand-in failure"):
        agreement.check("erniekit", {}, record, {}, trainer)
    assert __import__("time").monotonic() - began < agreement.PROBE_TIMEOUT / 2  # not waited out
    from paddle_ocrvl_sft import processes

    assert not processes.alive(pid[0])


@pytest.fixture
def fake_sides(monkeypatch):
    """Both sides stood in: the trainer reads record N of the messages file as PaddleFormers does (images
    relative to the file's dir) and reports it; the ids agree. What is tested is WHICH record it reads."""
    def trainer_reads(backend, trainer_env, config_path, data, index, launch_env, probe=None):
        value = json.loads(Path(data).read_text(encoding="utf-8").splitlines()[index])
        image = os.path.join(os.path.dirname(data), value["images"][0])
        return Tokens([1, 2, 3], "stand-in trainer", loss=[2],
                      read=(value["messages"][0]["content"].replace("<image>", ""), image))

    monkeypatch.setattr(agreement, "training_input", trainer_reads)
    monkeypatch.setattr(agreement, "paddlex_input", lambda *a, **k: (Tokens([1, 2], "stand-in PaddleX"), FakeNamer()))


def paddleformers_plan(tmp_path, monkeypatch, *data: str) -> Path:
    monkeypatch.setenv(envs.HOME_ENV, str(tmp_path / "no-trainers"))  # plan records "not checked"
    base = build_tiny_model(tmp_path / "base")
    out = tmp_path / "plan"
    assert main(["plan", "--backend", "paddleformers", "--device", "cpu", *[a for d in data for a in ("--data", d)],
                 "--model", str(base), "--epochs", "1", "--max-seq-len", "2048", "-o", str(out)]) == 0
    return out


def test_a_paddleformers_check_reads_the_task_files_sample_not_a_resampled_share(tmp_path, monkeypatch, fake_sides):
    """``--data X:0.2 --data task.jsonl``: X's messages file is a shuffled, resampled copy; its first
    record is not X's first sample (before: "the training data changed since `plan`")."""
    from tests.conftest import sample, write_image, write_jsonl

    write_image(tmp_path / "data" / "a.png")
    share = write_jsonl(tmp_path / "data" / "x.jsonl", [sample("a.png", prompt=f"Read {i}:") for i in range(5)])
    task = write_jsonl(tmp_path / "data" / "task.jsonl", [sample("a.png", answer=f"t {i}") for i in range(8)])
    plan_dir = paddleformers_plan(tmp_path, monkeypatch, f"{share}:0.2", str(task))
    record = agreement.check_plan(plan_dir, trainer_env=stand_in_trainer(tmp_path, "exit 1\n"))
    assert record["status"] == "agreed" and record["sample"] == f"{task}:1"


def test_a_paddleformers_check_finds_the_sample_after_a_two_image_record(tmp_path, monkeypatch, fake_sides):
    """first_sample passes over a two-image sample; the messages file keeps it as record 0."""
    from tests.conftest import sample, write_image, write_jsonl

    write_image(tmp_path / "data" / "a.png")
    two_images = make_sample(["a.png", "a.png"], [("Compare:", "same")])
    task = write_jsonl(tmp_path / "data" / "task.jsonl", [two_images] + [sample("a.png", answer=f"t {i}") for i in range(4)])
    plan_dir = paddleformers_plan(tmp_path, monkeypatch, str(task))
    record = agreement.check_plan(plan_dir, trainer_env=stand_in_trainer(tmp_path, "exit 1\n"))
    assert record["status"] == "agreed" and record["sample"] == f"{task}:2" and record["prompt"] == "OCR:"
    messages = Path(yaml.safe_load((plan_dir / "config.yaml").read_text())["train_dataset_path"])
    messages.write_text("\n".join(messages.read_text().splitlines()[:1]) + "\n")  # the sample is gone from it
    with pytest.raises(UserError, match="holds no record of .*the training data changed since `plan`"):
        agreement.check_plan(plan_dir, trainer_env=stand_in_trainer(tmp_path / "2", "exit 1\n"))


def test_export_checks_against_the_newest_runs_agreement_when_plan_could_not_check(tmp_path):
    """`plan` without the trainer installed records "not checked"; `train` checked before its launch."""
    plan_dir = tmp_path / "plan"
    (plan_dir / "output").mkdir(parents=True)
    (plan_dir / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(plan_dir / "output")}))
    (plan_dir / "plan.json").write_text(json.dumps({"agreement": agreement.not_checked("no trainer here")}))
    for run, started, sample in (("20260101-000000", "2026-01-01T00:00:00+00:00", "old"),
                                 ("20260102-000000", "2026-01-02T00:00:00+00:00", "new")):
        (plan_dir / "runs" / run).mkdir(parents=True)
        (plan_dir / "runs" / run / "record.json").write_text(json.dumps(
            {"started": started, "agreement": {"status": "agreed", "sample": sample}}))
    assert agreement.plan_reference(plan_dir / "output")["sample"] == "new"
    assert agreement.plan_reference(plan_dir / "output" / "checkpoint-5")["sample"] == "new"


# --- what plans train with ------------------------------------------------------------------------


@pytest.mark.parametrize("release", releases.NAMES)
def test_the_paddleformers_template_module_carries_the_release_marker(release):
    info = releases.get(release)
    text = paddleformers_template.module_source(info.name, info.title, info.assistant_marker, "none")
    tree = ast.parse(text)  # valid Python
    constants = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)}
    assert constants == {"NAME": f"paddle_ocrvl_sft_{release.replace('.', '_')}", "RELEASE": release,
                         "ASSISTANT_MARKER": info.assistant_marker, "AUGMENT": "none"}
    assert '"User: {{content}}" + ASSISTANT_MARKER' in text  # PaddleFormers' slot syntax, the release's marker after it
    assert paddleformers_template.config_keys("/p/paddleocr_vl_template.py", release) == {
        "template_backend": "custom", "template": constants["NAME"], "custom_register_path": "/p/paddleocr_vl_template.py"}


def test_augmentation_choices_per_trainer():
    assert augment.choose("paddleformers", None)[0] == "none"  # the default keeps inference's token counts
    assert augment.choose("paddleformers", "default")[1]["choice"] == "default"
    assert augment.choose("erniekit", None)[0] == "default"  # ERNIEKit has no switch; its token counts do not change
    with pytest.raises(UserError, match="ERNIEKit v1.4 always augments.*--backend paddleformers"):
        augment.choose("erniekit", "none")


# --- the ERNIEKit marker fix ------------------------------------------------------------------------


def vendored_function_source() -> str:
    """``apply_chat_training_template`` as inspect.getsource gives it, read from ERNIEKit's source."""
    source = erniekit_source()
    if source is None:
        pytest.skip("no ERNIEKit source (set ERNIEKIT_SRC or place ../shared/vendor/ERNIE-*.tar.gz)")
    if source.is_dir():
        text = (source / MARKER_MODULE).read_text(encoding="utf-8")
    else:
        with tarfile.open(source) as tar:
            member = next(m for m in tar.getmembers() if m.name.split("/", 1)[-1] == MARKER_MODULE)
            text = tar.extractfile(member).read().decode("utf-8")
    node = next(n for n in ast.parse(text).body if getattr(n, "name", "") == erniekit_marker_hook.TARGET_FUNCTION)
    return "".join(text.splitlines(keepends=True)[node.lineno - 1: node.end_lineno])


def test_the_marker_fix_is_written_for_the_vendored_erniekit_and_refuses_other_source():
    source = vendored_function_source()
    fixed = erniekit_marker_hook.fixed_source(source, "\nAssistant:\n")
    assert '"\\nAssistant: "' in source and '"\\nAssistant:\\n"' in fixed and fixed.count("Assistant") == 1
    with pytest.raises(erniekit_marker_hook.FixRefused, match="Refusing to patch unknown code.*--backend paddleformers"):
        erniekit_marker_hook.fixed_source(source.replace("pic_id = 1", "pic_id = 0"), "\nAssistant:\n")


def fake_erniekit_module(root: Path, function_source: str) -> Path:
    """A package tree holding ERNIEKit's module path with ``function_source`` as its only content."""
    module = root / MARKER_MODULE
    module.parent.mkdir(parents=True)
    for d in [module.parent, *module.parent.parents]:
        if d == root:
            break
        (d / "__init__.py").touch()
    module.write_text(function_source, encoding="utf-8")
    return root


def hook_dir(root: Path, release: str = "v1.5") -> Path:
    from paddle_ocrvl_sft.backends import erniekit_release

    erniekit_release.write_hook(root, release)
    return root / erniekit_release.HOOK_DIR


def test_the_marker_fix_reaches_a_new_python_and_refuses_another_version_there(tmp_path):
    """Real subprocesses, as every GPU worker starts: PYTHONPATH holds the plan's trainer_hooks."""
    hooks = hook_dir(tmp_path / "plan")
    (tmp_path / "next").mkdir()
    (tmp_path / "next" / "sitecustomize.py").write_text("import os\nos.environ['SHADOWED_SITECUSTOMIZE_RAN'] = '1'\n")
    probe = ("import os, data_processor.steps.input_ids_messaging.chat_template_utils as m; "
             "print(m.PADDLE_OCRVL_SFT_FIX, os.environ.get('SHADOWED_SITECUSTOMIZE_RAN'))")
    source = vendored_function_source()
    for name, text in (("same", source), ("other", source.replace("pic_id = 1", "pic_id = 0"))):
        tree = fake_erniekit_module(tmp_path / name, text)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(tree), str(tmp_path / "next")])}
        proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if name == "same":
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == "v1.5: user turn ends with '\\nAssistant:\\n' instead of ERNIEKit's '\\nAssistant: ' 1"
            assert "ERNIEKit assistant-marker fix applied in process" in proc.stderr
        else:
            assert proc.returncode == 1 and "FixRefused" in proc.stderr and "Refusing to patch unknown code" in proc.stderr


# --- with the trainers' real environments (slow) ------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models of the three releases and two KIE receipts (the first one is the checked sample)."""
    root = tmp_path_factory.mktemp("agreement")
    rows = []
    for i, total in enumerate(("12.50", "7.00")):
        receipt_image({"TOTAL": total}).save(root / f"r{i}.png")
        rows.append(make_sample([f"r{i}.png"], [(kie_prompt({"TOTAL": ""}), render_json({"TOTAL": total}))]))
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    models = {r: build_tiny_model(root / f"base-{r}", release=r) for r in releases.NAMES}
    return data, models


def plan(world, tmp_path, backend, release, *args, check=True):
    data, models = world
    out = tmp_path / f"plan-{backend}-{release}"
    argv = ["plan", "--backend", backend, "--device", "cpu", "--data", str(data), "--model", str(models[release]),
            "--epochs", "1", "--max-seq-len", "2048", "-o", str(out), *args]
    return main(argv + ([] if check else ["--skip-agreement-check"])), out


@pytest.mark.slow
@pytest.mark.parametrize("release", releases.NAMES)
@pytest.mark.parametrize("backend", ["paddleformers", "erniekit"])
def test_each_trainer_trains_with_the_prompt_paddlex_sends(installed, world, tmp_path, capsys, backend, release):
    """3 releases x 2 trainers: the first sample through the trainer's own data code (its environment,
    the plan's launch env) equals PaddleX's inference input, and the loss starts at the answer."""
    need(installed, backend)
    status, out = plan(world, tmp_path, backend, release)
    printed = capsys.readouterr().out
    assert status == 0, printed
    record = json.loads((out / "plan.json").read_text())["agreement"]
    assert record["status"] == "agreed" and record["release"] == release
    assert record["training"]["prompt_tokens"] == record["inference"]["tokens"] == record["training"]["loss_from"]
    assert record["training"]["image_tokens"] == record["inference"]["image_tokens"] > 0
    marker = releases.get(release).assistant_marker
    ids = agreement.decode_ids(record["prompt_ids"])
    assert ids[-3:] == ([523, 743, 742] if marker == "\nAssistant: " else [523, 743, 23])  # "Assistant" ":" " " / "\n"
    assert "prompt agreement: the trainer's training input of" in printed
    config = yaml.safe_load((out / "config.yaml").read_text())
    notes = " ".join(record["training"]["notes"])
    if backend == "paddleformers":
        assert config["template"] == f"paddle_ocrvl_sft_{release.replace('.', '_')}"
        assert Path(config["custom_register_path"]) == out.resolve() / "paddleocr_vl_template.py"
        assert "ReleasePlugin: no image augmentation" in notes
    elif release == "v1":
        assert "ERNIEKit's own assistant marker (no fix applied)" in notes and not (out / "trainer_hooks").exists()
    else:
        assert "assistant marker fix applied: " + release in notes
        assert json.loads((out / "plan.json").read_text())["train"]["env"]["PYTHONPATH"] == str(out.resolve() / "trainer_hooks")


@pytest.mark.slow
def test_a_v1_template_against_a_1_5_base_is_refused(installed, world, tmp_path, capsys):
    """PaddleFormers: its built-in (v1) template on a 1.5 base; the plan is not written."""
    status, out = plan(world, tmp_path, "paddleformers", "v1.5", "template=paddleocr_vl")
    err = capsys.readouterr().err
    assert status == 1 and not out.exists()
    assert "prompt agreement FAILED: the token ids differ from position" in err
    (marked,) = [line for line in err.splitlines() if line.lstrip().startswith(">>")]
    assert "742 ' '" in marked and "23 '<0x0A>'" in marked  # trained " ", asked with "\n"
    assert "training: template 'paddleocr_vl'" in err


@pytest.mark.slow
def test_erniekit_without_the_marker_fix_is_refused_before_launch(installed, world, tmp_path, capsys):
    """ERNIEKit's hard-coded v1 marker on a 1.5 base: a plan whose trainer_hooks went missing is
    stopped by `train` (and doctor) before anything runs."""
    need(installed, "erniekit")
    status, out = plan(world, tmp_path, "erniekit", "v1.5", check=False)
    assert status == 0
    shutil.rmtree(out / "trainer_hooks")
    assert main(["train", str(out), "--no-export"]) == 1
    err = capsys.readouterr().err
    assert "prompt agreement FAILED" in err and "ERNIEKit's own assistant marker (no fix applied)" in err
    assert not (out / "runs").exists()  # refused before a run dir was made


@pytest.mark.slow
def test_the_bos_a_paddleformers_saved_tokenizer_adds_is_refused_and_export_keeps_the_base_tokenizer(installed, world, tmp_path):
    """PaddleFormers 1.2.0's own save_pretrained drops ``add_bos_token: false``: PaddleX then prompts
    with ``<s>``. Export takes BASE's tokenizer files, and checks the bundle against the prompt."""
    _, models = world
    base = models["v1"]
    saved = tmp_path / "pf-saved"
    python = envs.env_python("paddleformers")
    code = ("import sys; from paddleformers.transformers import AutoTokenizer; "
            "AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])")
    proc = subprocess.run([str(python), "-c", code, str(base), str(saved)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "add_bos_token" not in json.loads((saved / "tokenizer_config.json").read_text())

    planted = tmp_path / "planted"  # the base with the PaddleFormers-saved tokenizer_config.json
    shutil.copytree(base, planted)
    shutil.copyfile(saved / "tokenizer_config.json", planted / "tokenizer_config.json")
    with pytest.raises(Disagreement) as caught:
        agreement.check_bundle(planted, "paddle", base, "PaddleOCR-VL-0.9B", None, probe_image)
    (marked,) = [line for line in str(caught.value).splitlines() if line.lstrip().startswith(">>")]
    assert marked.split()[-2:] == ["1", "'<s>'"]

    run = build_tiny_model(tmp_path / "run", "erniekit_output", checkpoints=())
    for name in ("tokenizer_config.json", "tokenizer.model"):  # what a PaddleFormers run leaves
        shutil.copyfile(saved / name, run / name)
    report = export(run, base, tmp_path / "bundle")
    assert (tmp_path / "bundle" / "tokenizer_config.json").read_bytes() == (base / "tokenizer_config.json").read_bytes()
    assert any("RUN's has lost add_bos_token: false" in line for line in report.changes)
    assert any("prompt agreement" in line and "the base model" in line for line in report.verified)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["erniekit", "paddleformers"])
def test_a_1_5_model_is_trained_and_exported_with_its_own_prompt(installed, world, tmp_path, capsys, backend):
    """plan (checked) -> real CPU training (checked again before launch; the template module or the
    marker fix is in the trainer's own log) -> export (its bundle checked against the plan's prompt)."""
    need(installed, backend)
    status, out = plan(world, tmp_path, backend, "v1.5", "save_steps=100")
    assert status == 0
    status = main(["train", str(out)])
    printed, errors = capsys.readouterr()
    assert status == 0, errors[-3000:]  # the diagnosis in the short test summary
    (run,) = (out / "runs").iterdir()
    record = json.loads((run / "record.json").read_text())
    assert record["agreement"]["status"] == "agreed" and record["exit"] == 0
    log = (run / "train.log").read_text()
    if backend == "erniekit":
        assert "ERNIEKit assistant-marker fix applied in process" in log  # in the training process itself
    else:
        assert f"Successfully loaded custom templates from {out.resolve() / 'paddleocr_vl_template.py'}" in log
    assert "prompt agreement: PaddleX" in printed and "as plan recorded it" in printed  # export's check of the bundle
    assert (out / "bundle" / "model.safetensors").is_file()


# --- hf bundles in PaddleX's transformers engine and transformers' AutoProcessor --------------------


@pytest.mark.slow
@pytest.mark.parametrize("release", ["v1", "v1.5"])
def test_hf_bundles_load_in_paddlex_transformers_engine_and_autoprocessor(world, tmp_path, release):
    from transformers import AutoProcessor

    _, models = world
    base = models[release]
    run = build_tiny_model(tmp_path / "run", "erniekit_output", release=release, checkpoints=())
    out = tmp_path / "hf"
    report = export(run, base, out, fmt="hf")  # verified: transformers, and the three inference paths' prompts
    (agreed,) = [line for line in report.verified if "prompt agreement" in line]
    assert "transformers engine (AutoProcessor, apply_chat_template)" in agreed
    assert "paddle-ocrvl-sft predict --backend transformers" in agreed
    processor = AutoProcessor.from_pretrained(str(out))
    assert type(processor.image_processor).__name__.startswith("PaddleOCRVLImageProcessor")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR:"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == releases.render_generation_prompt((base / "chat_template.jinja").read_text())


@pytest.mark.slow
def test_why_the_hf_bundle_changes_the_v1_files(world, tmp_path):
    """The released v1 files with only the image_token transformers' processor needs (what `export
    --format hf` wrote before): AutoProcessor builds a SigLIP image processor, and a plain
    apply_chat_template drops the image start/end markers training used."""
    from transformers import AutoProcessor

    from paddle_ocrvl_sft.export import _add_image_token

    _, models = world
    before = shutil.copytree(models["v1"], tmp_path / "before")
    _add_image_token(before / "tokenizer_config.json")
    processor = AutoProcessor.from_pretrained(str(before))
    assert type(processor.image_processor).__name__.startswith("SiglipImageProcessor")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR:"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_sentence|>User: <|IMAGE_PLACEHOLDER|>OCR:\nAssistant: "  # no <|IMAGE_START|>/<|IMAGE_END|>
