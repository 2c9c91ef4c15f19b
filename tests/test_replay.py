"""data replay: the base model's answers as samples (validated, resumable), and plan's mixing of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import sample, write_image, write_jsonl
from paddle_ocrvl_sft import cli
from paddle_ocrvl_sft.data.replay import progress_dir, write_replay
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.loop_guard import Answer
from paddle_ocrvl_sft.plan import REPLAY_WARNING, SMALL_TASK_DATA, mix_datasets, parse_data_spec
from paddle_ocrvl_sft.testing import build_scripted_model, build_tiny_model, receipt_image


@pytest.fixture
def pages(tmp_path) -> Path:
    folder = tmp_path / "pages"
    folder.mkdir()
    for i in range(4):
        receipt_image({"total": f"{i}.50"}).save(folder / f"p{i}.png")
    return folder


class Scripted:
    """A stand-in backend: a fixed answer per image name; can fail one image or stop after some jobs."""

    answers = {"p0.png": Answer("TOTAL 0.50", "stop"), "p1.png": Answer("", "stop"),
               "p2.png": Answer("TOTAL 2.5", "length"), "p3.png": Answer("x" + "12" * 30, "stop")}

    def __init__(self, stop_after=None, fail=()):
        self.seen, self.stop_after, self.fail = [], stop_after, set(fail)

    def __call__(self, job):
        if self.stop_after is not None and len(self.seen) == self.stop_after:
            raise KeyboardInterrupt
        name = Path(job.image).name
        self.seen.append(name)
        if name in self.fail:
            raise OSError("unreadable")
        return self.answers[name]


def use(monkeypatch, backend):
    monkeypatch.setattr("paddle_ocrvl_sft.predict.make_backend", lambda name, **options: backend)


def test_replay_writes_valid_samples_and_leaves_out_runaways(tmp_path, pages, monkeypatch):
    use(monkeypatch, Scripted())
    out = tmp_path / "data" / "replay.jsonl"
    report = write_replay(tmp_path / "base", [pages], out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == report.written == 1
    assert rows[0]["image_info"][0]["image_url"] == "../pages/p0.png"  # relative to OUT's folder, resolving
    assert rows[0]["text_info"] == [{"text": "OCR:", "tag": "mask"}, {"text": "TOTAL 0.50", "tag": "no_mask"}]
    assert {k: len(v) for k, v in report.skipped.items()} == {"empty": 1, "at the token cap": 1, "ends in a loop": 1}
    assert not progress_dir(out).exists()  # complete: nothing left to resume
    assert cli.main(["data", "validate", str(out)]) == 0  # validated like any dataset


def test_replay_resumes_and_retries_failures(tmp_path, pages, monkeypatch, capsys):
    out = tmp_path / "replay.jsonl"
    first = Scripted(stop_after=3)
    use(monkeypatch, first)
    with pytest.raises(KeyboardInterrupt):
        write_replay(tmp_path / "base", [pages], out, tasks=["ocr", "table"], progress=False)
    assert not out.exists() and len((progress_dir(out) / "predictions.jsonl").read_text().splitlines()) == 3

    second = Scripted(fail={"p3.png"})
    use(monkeypatch, second)
    argv = ["data", "replay", "--model", str(tmp_path / "base"), "--images", str(pages), "--tasks", "ocr,table",
            "-o", str(out), "--no-progress"]
    assert cli.main(argv) == 1  # p3 failed: OUT holds the rest, the failure is named
    assert second.seen == ["p1.png", "p2.png", "p2.png", "p3.png", "p3.png"]  # only what was not done
    assert "2 answer(s) failed" in capsys.readouterr().err and out.is_file()

    third = Scripted()
    use(monkeypatch, third)
    assert cli.main(argv) == 1 and "already exists" in capsys.readouterr().err  # OUT is not replaced silently
    assert cli.main([*argv, "--force"]) == 0
    assert third.seen == ["p3.png", "p3.png"]  # the failed ones retried, nothing else asked again
    assert not progress_dir(out).exists()


def test_replay_force_starts_over_when_the_pages_changed(tmp_path, pages, monkeypatch, capsys):
    """A progress dir left by other --images is refused in replay's words, and --force starts it over."""
    out = tmp_path / "replay.jsonl"
    use(monkeypatch, Scripted(stop_after=1))
    with pytest.raises(KeyboardInterrupt):
        write_replay(tmp_path / "base", [pages], out, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (pages / "p0.png").rename(other / "p0.png")
    argv = ["data", "replay", "--model", str(tmp_path / "base"), "--images", str(other), "-o", str(out), "--no-progress"]
    again = Scripted()
    use(monkeypatch, again)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "holds a replay made with other inputs (pages changed)" in err and "evaluation" not in err
    assert cli.main([*argv, "--force"]) == 0 and again.seen == ["p0.png"]
    assert [json.loads(line)["image_info"][0]["image_url"] for line in out.read_text().splitlines()] == ["other/p0.png"]


def test_replay_with_no_answer_worth_learning_is_an_error(tmp_path, pages, monkeypatch, capsys):
    (pages / "p0.png").unlink()  # the only good answer
    use(monkeypatch, Scripted())
    out = tmp_path / "replay.jsonl"
    assert cli.main(["data", "replay", "--model", str(tmp_path / "base"), "--images", str(pages), "-o", str(out),
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not written: none of the 3 answer(s) is a sample worth learning" in err
    assert "empty" in err and "at the token cap" in err and "ends in a loop" in err
    assert not out.exists()


def test_replay_refuses_bad_input(tmp_path, pages, capsys):
    assert cli.main(["data", "replay", "--model", "m", "--images", str(pages), "--tasks", "ocr,kie",
                     "-o", str(tmp_path / "r.jsonl")]) == 2
    assert "--tasks ocr,kie" in capsys.readouterr().err
    assert cli.main(["data", "replay", "--model", "m", "--images", str(tmp_path / "nope"),
                     "-o", str(tmp_path / "r.jsonl")]) == 1
    assert "nope: no such image, folder or dataset file" in capsys.readouterr().err
    assert cli.main(["data", "replay", "--images", str(pages), "-o", str(tmp_path / "r.jsonl")]) == 2
    assert "needs --model BASE_DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_replay_with_the_real_paddle_backend(tmp_path, pages):
    base = build_scripted_model(tmp_path / "base", "42", loop=False)  # answers "42" and stops
    out = tmp_path / "replay.jsonl"
    assert cli.main(["data", "replay", "--model", str(base), "--images", str(pages), "--tasks", "ocr,formula",
                     "-o", str(out), "--device", "cpu", "--max-new-tokens", "8", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and {r["text_info"][1]["text"] for r in rows} == {"42"}
    assert cli.main(["data", "validate", str(out)]) == 0


# --- plan: mixing replay in ---------------------------------------------------------------------------


def test_data_spec_and_the_mix_formulas(tmp_path):
    assert parse_data_spec("replay.jsonl:0.2") == ("replay.jsonl", 0.2)
    assert parse_data_spec("task.jsonl") == ("task.jsonl", None)
    odd = write_jsonl(tmp_path / "odd:1.jsonl", [])
    assert parse_data_spec(str(odd)) == (str(odd), None)  # an existing file keeps its colon
    with pytest.raises(UserError, match="between 0 and 1"):
        parse_data_spec("replay.jsonl:1.5")

    # ERNIEKit: 100 task samples (all valid), 1000 replay (900 valid) at 0.2 -> D = 125, replay trains 25
    mix = mix_datasets([100, 1000], [100, 900], None, [None, 0.2], weighted=True)
    assert mix.d == 125 and mix.shares == pytest.approx([0.8, 0.2])
    p_task, p_replay = mix.probs
    trained = [p_task * 1100 * 100 / 100, p_replay * 1100 * 900 / 1000]  # ERNIEKit's draws minus invalid records
    assert trained[1] / sum(trained) == pytest.approx(0.2)
    assert mix.passes == pytest.approx([1.0, 25 / 900])  # --epochs counts passes over the task data
    # PaddleFormers concatenates: the replay file is resampled to k = round(0.2 * 100 / 0.8) = 25 samples
    concat = mix_datasets([100, 1000], [100, 900], None, [None, 0.2], weighted=False)
    assert concat.d == 125 and concat.take == [None, 25] and concat.shares == pytest.approx([0.8, 0.2])
    with pytest.raises(UserError, match="add up to 1"):
        mix_datasets([10, 10, 10], [10, 10, 10], None, [None, 0.5, 0.5], weighted=True)
    with pytest.raises(UserError, match="--prob with FILE:RATIO"):
        mix_datasets([10, 10], [10, 10], [1, 2], [None, 0.2], weighted=True)
    with pytest.raises(UserError, match="at least one is the task data"):
        mix_datasets([10], [10], None, [0.2], weighted=True)


@pytest.fixture
def mixable(tmp_path):
    write_image(tmp_path / "img.png")
    task = write_jsonl(tmp_path / "task.jsonl", [sample("img.png", "OCR:", f"task {i}") for i in range(8)])
    replay = write_jsonl(tmp_path / "replay" / "replay.jsonl",
                         [sample("../img.png", "Table Recognition:", f"<fcel>{i}<nl>") for i in range(3)])
    return task, replay, build_tiny_model(tmp_path / "base")


def test_plan_mixes_replay_for_erniekit_with_weights(tmp_path, mixable, capsys):
    task, replay, base = mixable
    plan = tmp_path / "plan"
    assert cli.main(["plan", "--data", str(task), "--data", f"{replay}:0.2", "--model", str(base), "--epochs", "2",
                     "-o", str(plan)]) == 0
    record = json.loads((plan / "plan.json").read_text())
    assert record["numbers"]["D"]["value"] == 10  # 8 task samples are 80%
    train = record["datasets"]["train"]
    assert [t["share"] for t in train] == pytest.approx([0.8, 0.2]) and train[1]["ratio"] == 0.2
    config = yaml.safe_load((plan / "config.yaml").read_text())
    weights = [float(w) for w in config["train_dataset_prob"].split(",")]
    assert weights[1] / sum(weights) == pytest.approx(0.2)  # p_i ∝ s_i n_i / kept_i, every sample valid here
    assert not any("no replay data" in w for w in record["warnings"])
    assert "20% of the samples trained" in capsys.readouterr().out


def test_plan_resamples_replay_for_paddleformers(tmp_path, mixable):
    task, replay, base = mixable
    plan = tmp_path / "plan"
    assert cli.main(["plan", "--backend", "paddleformers", "--device", "cpu", "--data", str(task), "--replay",
                     str(replay), "--replay-ratio", "0.5", "--model", str(base), "--epochs", "1", "-o", str(plan)]) == 0
    record = json.loads((plan / "plan.json").read_text())
    assert record["numbers"]["D"]["value"] == 16 and record["datasets"]["train"][1]["samples_per_epoch"] == 8
    config = yaml.safe_load((plan / "config.yaml").read_text())
    task_messages, replay_messages = config["train_dataset_path"].split(",")
    assert len(Path(replay_messages).read_text().splitlines()) == 8  # 3 replay samples drawn to 8: 50% of 16
    assert len(Path(task_messages).read_text().splitlines()) == 8
    resampled = plan / "data" / "share1" / "replay.jsonl"
    assert cli.main(["data", "validate", str(resampled)]) == 0  # image paths still resolve


def test_plan_warns_on_small_task_data_without_replay(tmp_path, mixable):
    task, _, base = mixable
    plan = tmp_path / "plan"
    assert cli.main(["plan", "--data", str(task), "--model", str(base), "--epochs", "1", "-o", str(plan)]) == 0
    warnings = json.loads((plan / "plan.json").read_text())["warnings"]
    assert REPLAY_WARNING.format(n=8) in warnings and SMALL_TASK_DATA == 2000
    assert "ERNIE issues #1396, #1440" in REPLAY_WARNING
