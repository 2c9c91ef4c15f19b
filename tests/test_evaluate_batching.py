"""eval --backend transformers batches like predict: same batch size, KV cache and answers (tiny model, CPU)."""

from __future__ import annotations

import json

import pytest

from conftest import sample, write_jsonl
from paddle_ocrvl_sft import cli
from paddle_ocrvl_sft.predict import TransformersBackend
from paddle_ocrvl_sft.testing import build_tiny_model, receipt_image


@pytest.mark.slow
def test_eval_transformers_batches_as_predict_does(tmp_path, monkeypatch, capsys):
    from paddle_ocrvl_sft.export import export

    base = build_tiny_model(tmp_path / "base", "base")
    hf = tmp_path / "hf"
    export(base, base, hf, fmt="hf", verify=False)
    rows = []
    for i in range(6):
        receipt_image({"n": str(i)}, width=160 + 32 * (i % 3)).save(tmp_path / f"r{i}.png")
        rows.append(sample(f"r{i}.png", ["OCR:", "Table Recognition:"][i % 2], f"TOTAL {i}"))
    val = write_jsonl(tmp_path / "val.jsonl", rows)

    calls = []
    batch = TransformersBackend.batch

    def spy(self, jobs):
        calls.append((len(jobs), self.batch_size, self.kv_cache))
        return batch(self, jobs)

    monkeypatch.setattr(TransformersBackend, "batch", spy)
    assert cli.main(["eval", "--data", str(val), "--model", str(hf), "--backend", "transformers", "--device", "cpu",
                     "--batch-size", "4", "--max-new-tokens", "6", "-o", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert calls == [(6, 4, "static")]  # all six handed over at once (sorted, prepared ahead), 4 per model call
    evaluated = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]

    calls.clear()
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", str(val), "--model", str(hf), "--backend", "transformers", "--device", "cpu",
                     "--batch-size", "4", "--max-new-tokens", "6", "-o", str(out), "--no-progress"]) == 0
    assert calls == [(6, 4, "static")]
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in evaluated] == [r["text"] for r in predicted]
    capsys.readouterr()
