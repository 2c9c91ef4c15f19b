"""The loop guard: the repetition rule, and a planted loop stopped in both local backends."""

from __future__ import annotations

import json

import pytest

from paddle_ocrvl_sft.loop_guard import (Answer, Guard, cut_ids, cut_text, ends_in_loop, find_loop,
                                         first_loop_end)
from paddle_ocrvl_sft.predict import Job, make_backend, to_record
from paddle_ocrvl_sft.testing import build_looping_model, receipt_image


def test_find_loop_takes_the_shortest_period_and_a_partial_last_copy():
    found = find_loop("intro abcabcabcab", repeats=3, max_period=5, min_span=6)
    assert (found.period, found.start, found.span) == (3, 6, 11)  # "abcabcabcab": 3 copies and 2/3
    assert found.cut == 9  # keep "intro " and one "abc"
    assert find_loop("intro abcabcab", repeats=3, max_period=5, min_span=6) is None  # 2.67 copies
    assert find_loop("----", repeats=3, max_period=5, min_span=6) is None  # a short run is not a loop
    assert find_loop([7, 1, 1, 1, 1, 1, 1], repeats=3, max_period=4, min_span=6).period == 1
    assert find_loop("abcdef", repeats=2, max_period=10, min_span=0) is None


def test_text_loops_are_counted_only_when_long_enough():
    assert ends_in_loop("TOTAL 12.50 " + "1234" * 12) is not None
    assert ends_in_loop("TOTAL 12.50\nDATE 01.02.2024") is None
    assert ends_in_loop("a table rule: " + "-" * 20) is None  # 20 characters: under TEXT_MIN_SPAN
    assert ends_in_loop("x" * 40) is not None


def test_guard_cuts_a_row_where_it_would_have_stopped():
    guard = Guard(4, max_period=8, min_span=8)
    row = [5, 6] + [1, 2, 3] * 10 + [9, 9]
    stop = first_loop_end(row, guard)
    assert stop == 2 + 12  # 4 copies of (1, 2, 3) seen: generation would stop here
    assert cut_ids(row, guard) == (5, "repeats")  # kept: 5 6 1 2 3
    assert cut_ids([5, 6, 7, 2, 0, 0], guard, 2) == (3, "stop")
    assert cut_ids([5, 6, 7, 8], guard, 2) == (4, "length")
    assert cut_ids([5, 6, 7, 8], None, 2) == (4, "length")
    assert cut_ids([5, 6, 7, 8, 0], None, {2, 7}) == (2, "stop")  # any of the decoder's stop ids ends the row
    assert cut_text("abc" + "xy" * 10, guard) == "abcxy"
    with pytest.raises(ValueError):
        Guard(1)


def test_answer_is_a_str_that_says_how_it_ended():
    answer = Answer("12", "length")
    assert answer == "12" and answer.finish == "length"
    record = to_record(Job("a.png", "OCR:"), answer)
    assert record == {"image": "a.png", "prompt": "OCR:", "text": "12", "finish": "length"}
    assert "finish" not in to_record(Job("a.png", "OCR:"), "12")


@pytest.fixture(scope="module")
def looping(tmp_path_factory):
    from paddle_ocrvl_sft.export import export

    root = tmp_path_factory.mktemp("loop")
    model = build_looping_model(root / "model")
    export(model, model, root / "hf", fmt="hf", verify=False)
    image = root / "page.png"
    receipt_image({"total": "1.00"}).save(image)
    return model, root / "hf", image


@pytest.mark.slow
@pytest.mark.parametrize("backend,kv_cache", [("paddle", None), ("transformers", "static"), ("transformers", "dynamic")])
def test_a_planted_loop_runs_to_the_cap_and_the_guard_stops_it(looping, backend, kv_cache):
    model, hf, image = looping
    job = Job(str(image), "OCR:")
    options = {"model_dir": model} if backend == "paddle" else {"model_dir": hf, "kv_cache": kv_cache}
    plain = make_backend(backend, device="cpu", max_new_tokens=60, **options)
    record = to_record(job, plain.batch([job])[0])
    assert record["text"] == ("123" * 20) and record["finish"] == "length"
    assert ends_in_loop(record["text"]) is not None

    guarded = make_backend(backend, device="cpu", max_new_tokens=60, stop_repeats=4, **options)
    generated = []  # transformers stops generating: fewer new tokens than the cap
    if kv_cache == "static":
        original_run = guarded.decoder.run

        def spy_run(rows, on_done, **kwargs):
            def counted(i, ids):
                generated.append(len(ids))
                on_done(i, ids)
            return original_run(rows, counted, **kwargs)

        guarded.decoder.run = spy_run
    elif kv_cache == "dynamic":
        original_generate = guarded.model.generate

        def spy_generate(**kwargs):
            out = original_generate(**kwargs)
            generated.append(out.shape[1] - kwargs["input_ids"].shape[1])
            return out

        guarded.model.generate = spy_generate
    record = to_record(job, guarded.batch([job])[0])
    assert record == {"image": str(image), "prompt": "OCR:", "text": "123", "finish": "repeats"}
    if backend == "transformers":
        # stopped once the cycle spans MIN_SPAN = 32 tokens (10.7 copies), not at 60; the static decoder
        # looks every CHECK_EVERY = 8 steps, and 32 is one of its looks
        assert generated == [32]


def test_the_cli_help_states_the_guards_numbers():
    from paddle_ocrvl_sft.commands import STOP_REPEATS_HELP
    from paddle_ocrvl_sft.loop_guard import MAX_PERIOD, MIN_SPAN

    assert f"up to {MAX_PERIOD} tokens" in STOP_REPEATS_HELP and f"over {MIN_SPAN}+ tokens" in STOP_REPEATS_HELP


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_stop_repeats_reaches_the_backend_from_predict_and_serve(command, tmp_path, monkeypatch):
    import sys
    import types

    from paddle_ocrvl_sft import cli, predict

    seen = {}

    class Stub:
        def __call__(self, job):
            return Answer("1", "stop")

    def make_backend(name, **options):
        seen.update(options)
        return Stub()

    monkeypatch.setattr(predict, "make_backend", make_backend)
    monkeypatch.setitem(sys.modules, "uvicorn", types.SimpleNamespace(run=lambda app, **kw: None))
    image = tmp_path / "p.png"
    receipt_image({"total": "1"}).save(image)
    argv = {"predict": ["predict", str(image), "--model", str(tmp_path), "-o", str(tmp_path / "o.jsonl"), "--no-progress"],
            "serve": ["serve", "--backend", "genai-server", "--server-url", "http://127.0.0.1:9/v1",
                      "--served-model-name", "m"]}[command]
    assert cli.main([*argv, "--stop-repeats", "5"]) == 0
    assert seen["stop_repeats"] == 5
    if command == "predict":
        assert json.loads((tmp_path / "o.jsonl").read_text())["finish"] == "stop"


def test_a_guard_below_two_repeats_is_a_usage_error():
    from paddle_ocrvl_sft.errors import UsageError

    with pytest.raises(UsageError, match="--stop-repeats must be >= 2"):
        make_backend("paddle", model_dir="not-loaded", stop_repeats=1)  # refused before any model loads


class StopIdsFakes:
    """A model, processor and static decoder whose rows end on id 7: one of generation_config's
    eos_token_id [2, 7], not the tokenizer's eos (2)."""

    def __init__(self):
        import torch
        from types import SimpleNamespace

        self.tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=0)
        self.image_processor = SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3, rescale_factor=1 / 255)
        self.model = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32,
                                     generation_config=SimpleNamespace(eos_token_id=[2, 7], pad_token_id=0),
                                     generate=self.generate)
        self.decoder = SimpleNamespace(stop_ids=torch.tensor([2, 7]), run=self.run)

    def generate(self, input_ids, **kwargs):  # transformers' generate: the row stopped on 7, then padding
        import torch

        return torch.cat([input_ids, torch.tensor([[5, 6, 7, 0, 0]])], dim=1)

    def run(self, items, done, **kwargs):  # the static decoder hands a row over with the stop id it ended on
        done(0, [5, 6, 7])

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids if not (skip_special_tokens and int(i) in (0, 2, 7)))


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_a_row_ending_on_any_stop_id_finishes_stop_not_length(kv_cache):
    import torch
    from transformers import BatchFeature

    from paddle_ocrvl_sft.predict import TransformersBackend, hf_decode

    fakes = StopIdsFakes()
    if kv_cache == "static":
        backend = TransformersBackend.__new__(TransformersBackend)  # no model to load: the fakes stand in
        backend.processor, backend.decoder, backend.guard, backend.row_stop, backend.min_new_tokens = \
            fakes, fakes.decoder, None, None, 0
        answers = []
        backend.run_prepared(["row"], lambda i, text: answers.append(text))
    else:
        inputs = BatchFeature({"input_ids": torch.tensor([[1, 1]]), "pixel_values": torch.zeros(1, 3, 2, 2)})
        answers = hf_decode(fakes.model, fakes, inputs, [10])
    assert answers == ["5 6"] and answers[0].finish == "stop"


def test_a_servers_answer_says_how_it_ended_and_is_cut_as_text():
    from paddle_ocrvl_sft.predict import server_answer

    assert server_answer("12", "length", None).finish == "length"
    assert server_answer("12", "tool_calls", None).finish is None  # not one this project knows
    looping = "TOTAL " + "1234" * 20
    cut = server_answer(looping, "length", Guard(4))
    assert cut == "TOTAL 1234" and cut.finish == "repeats"
    assert server_answer("TOTAL 12.50", "stop", Guard(4)).finish == "stop"  # nothing to cut
