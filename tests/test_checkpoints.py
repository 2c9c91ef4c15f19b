"""One definition of a complete checkpoint (backends/checkpoints.py), as train's resume and export use it.

Each case is a checkpoint a real save leaves when it is cut short: a truncated shard under an index
that was already written, an empty scheduler, a flex checkpoint where one rank did not finish.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from paddle_ocrvl_sft import backends
from paddle_ocrvl_sft.backends import checkpoints
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.safetensors_file import write_safetensors

ERNIEKIT, PADDLEFORMERS = backends.get("erniekit"), backends.get("paddleformers")


def safetensors_shard(path: Path, n: int = 64) -> None:
    values = np.arange(n, dtype=np.float32)
    write_safetensors(path, {"w": ("F32", values.shape, values.tobytes())})


def unified(ckpt: Path, trainer_state: str) -> Path:
    """A complete unified (safetensors) checkpoint as both trainers write it on the CPU path."""
    ckpt.mkdir(parents=True)
    for kind in ("model", "optimizer"):
        shard = f"{kind}-00001-of-00001.safetensors"
        safetensors_shard(ckpt / shard)
        (ckpt / f"{kind}.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    (ckpt / trainer_state).write_text('{"global_step": 1}')
    (ckpt / "scheduler.pdparams").write_bytes(b"\x80\x04pickled")
    return ckpt


def flex(ckpt: Path, ranks: int, signalled: int) -> Path:
    """A PaddleFormers flex checkpoint of ``ranks`` ranks of which ``signalled`` finished saving."""
    ckpt.mkdir(parents=True)
    for name in ("model_state", "optimizer_state"):
        (ckpt / name).mkdir()
        (ckpt / name / "0.metadata").write_bytes(b"meta")
        for rank in range(ranks):
            (ckpt / name / f"{rank}_0.distcp").write_bytes(b"shard")
    for rank in range(signalled):
        (ckpt / f"saved_signal_{rank}").write_text("1")
    (ckpt / "trainer_state.bin").write_bytes(b"state")
    (ckpt / "scheduler.pdparams").write_bytes(b"sched")
    return ckpt


def test_a_shard_cut_short_under_its_index_is_not_complete(tmp_path):
    good = unified(tmp_path / "out" / "checkpoint-10", "trainer_state.json")
    cut = unified(tmp_path / "out" / "checkpoint-20", "trainer_state.json")
    shard = cut / "model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])  # killed while the weights were written
    assert ERNIEKIT.complete_checkpoints(tmp_path / "out") == {10: good}
    assert "model-00001-of-00001.safetensors: truncated" in ERNIEKIT.checkpoint_problem(cut)


def test_an_empty_file_and_a_missing_shard_are_not_complete(tmp_path):
    empty = unified(tmp_path / "out" / "checkpoint-10", "trainer_state.json")
    (empty / "scheduler.pdparams").write_bytes(b"")
    gone = unified(tmp_path / "out" / "checkpoint-20", "trainer_state.json")
    (gone / "optimizer-00001-of-00001.safetensors").unlink()
    assert ERNIEKIT.complete_checkpoints(tmp_path / "out") == {}
    assert ERNIEKIT.checkpoint_problem(empty) == "scheduler.pdparams is empty"
    assert "optimizer-00001-of-00001.safetensors missing (listed in optimizer.safetensors.index.json)" in \
        ERNIEKIT.checkpoint_problem(gone)


def test_a_flex_checkpoint_needs_every_ranks_signal(tmp_path):
    whole = flex(tmp_path / "out" / "checkpoint-10", ranks=2, signalled=2)
    half = flex(tmp_path / "out" / "checkpoint-20", ranks=2, signalled=1)  # rank 1 was still saving
    assert PADDLEFORMERS.complete_checkpoints(tmp_path / "out") == {10: whole}
    assert PADDLEFORMERS.checkpoint_problem(half) == "saved_signal_1 missing: rank 1 did not finish saving optimizer_state/"


def test_each_trainer_reads_its_own_layout(tmp_path):
    ernie = unified(tmp_path / "e" / "checkpoint-5", "trainer_state.json")
    pf = unified(tmp_path / "p" / "checkpoint-5", "trainer_state.bin")
    assert ERNIEKIT.checkpoint_problem(ernie) is None and PADDLEFORMERS.checkpoint_problem(pf) is None
    assert ERNIEKIT.checkpoint_problem(pf) == "trainer_state.json missing"


def test_resume_and_the_output_dir_check_use_the_same_definition(tmp_path, monkeypatch):
    from paddle_ocrvl_sft import train

    out = tmp_path / "out"
    unified(out / "checkpoint-10", "trainer_state.json")
    cut = unified(out / "checkpoint-20", "trainer_state.json")
    (cut / "model.safetensors.index.json").write_text("")
    plan = train.PlanRun(tmp_path, ERNIEKIT, "cpu", {"env": {}}, {"output_dir": str(out), "max_steps": 40})
    assert train.resume_checkpoint(plan, True) == out / "checkpoint-10"
    with pytest.raises(UserError, match=r"--resume checkpoint-20: not a complete checkpoint .*model.safetensors.index.json is empty"):
        train.resume_checkpoint(plan, "checkpoint-20")


def test_export_picks_only_complete_checkpoints(tmp_path):
    from paddle_ocrvl_sft.export import select_sources
    from paddle_ocrvl_sft.testing import build_tiny_model

    run = build_tiny_model(tmp_path / "run", "erniekit_output", checkpoints=(5, 10))
    shutil.copytree(run / "checkpoint-10", run / "checkpoint-15")
    (run / "checkpoint-15" / "scheduler.pdparams").unlink()  # the save of step 15 never finished
    assert select_sources(run, "last") == [(run / "checkpoint-10", "")]
    assert [sub for _, sub in select_sources(run, "all")] == ["checkpoint-5", "checkpoint-10"]
    skipped = []
    select_sources(run, "all", skipped.append)
    assert skipped == ["skipped checkpoint-15: incomplete (scheduler.pdparams missing)"]
    with pytest.raises(UserError, match=r"--checkpoint 15: .* is incomplete \(scheduler.pdparams missing\)"):
        select_sources(run, "15")


def test_resume_advice_checks_each_checkpoint_once(tmp_path, monkeypatch):
    """A check reads every shard's header: complete and incomplete ones come from one pass."""
    from paddle_ocrvl_sft import train

    out = tmp_path / "out"
    unified(out / "checkpoint-10", "trainer_state.json")
    (unified(out / "checkpoint-20", "trainer_state.json") / "scheduler.pdparams").unlink()
    checked = []
    problem = checkpoints.checkpoint_problem
    monkeypatch.setattr(checkpoints, "checkpoint_problem", lambda path, layouts: checked.append(path.name) or problem(path, layouts))
    plan = train.PlanRun(tmp_path, ERNIEKIT, "cpu", {"env": {}}, {"output_dir": str(out), "max_steps": 40})
    advice = train.resume_advice(plan, train.Options())
    assert "the last complete checkpoint is" in advice and "checkpoint-20 is incomplete" in advice
    assert sorted(checked) == ["checkpoint-10", "checkpoint-20"]


def test_all_checkpoints_lists_every_dir_by_step(tmp_path):
    for name in ("checkpoint-100", "checkpoint-20", "checkpoint-x", "other"):
        (tmp_path / name).mkdir()
    assert list(checkpoints.all_checkpoints(tmp_path)) == [20, 100]
