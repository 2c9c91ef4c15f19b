import json

from conftest import sample, write_image, write_jsonl

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.stats import dataset_stats, recommend
from paddle_ocrvl_sft.tokens import FACTOR


def test_recommend_holds_longest_and_packing():
    rec = recommend([1000] * 9 + [5000])
    assert rec.packing_size == 8 and rec.max_seq_len == 8192  # 8 x 1000 -> 8192; longest 5000 fits
    rec = recommend([4000] * 10)
    assert rec.packing_size == 4 and rec.max_seq_len == 16384
    assert recommend([20000]).max_seq_len == 20480
    assert recommend([]).max_seq_len == 16384


def test_stats_counts_kinds_sizes_and_longest(tmp_path):
    write_image(tmp_path / "small.png", (FACTOR * 20, FACTOR * 20))
    write_image(tmp_path / "big.png", (FACTOR * 40, FACTOR * 50))
    rows = [sample("small.png"), sample("small.png", "Table Recognition:", "<fcel>a<nl>"),
            sample("big.png", 'OCR:{"TOTAL": ""}', '{"TOTAL": "1"}'), sample("nope.png")]
    stats = dataset_stats([write_jsonl(tmp_path / "d.jsonl", rows)], top=2)
    assert stats.samples == 3 and stats.report.rejected == 1
    assert stats.kinds == {"ocr": 1, "table": 1, "kie": 1}
    assert stats.longest[0][2] == 3 and stats.longest[0][0] > 2000  # 40*50 image tokens
    pct = stats.percentiles()
    assert pct["image_width"]["p100"] == FACTOR * 40
    assert pct["sample_tokens"]["p50"] < pct["sample_tokens"]["p100"]


def test_cli_json_and_png(tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "img.png")
    data = write_jsonl(tmp_path / "d.jsonl", [sample(), sample(prompt="Formula Recognition:")])
    monkeypatch.chdir(tmp_path)
    assert main(["data", "stats", str(data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == 2 and doc["kinds"] == {"formula": 1, "ocr": 1}
    assert doc["recommended"]["max_seq_len"] >= doc["percentiles"]["sample_tokens"]["p100"]
    png = tmp_path / "d.stats.png"
    assert doc["plot"] == "d.stats.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["data", "stats", str(data), "--no-plot"]) == 0
    assert "recommended: max_seq_len" in capsys.readouterr().out


def test_stats_count_with_the_release_pixel_bounds_and_say_which(tmp_path, capsys):
    """A 2000x1500 scan: 2808 image tokens under v1's bounds, 1280 at most under 1.5's."""
    from paddle_ocrvl_sft.tokens import PixelBounds, image_tokens

    write_image(tmp_path / "scan.png", (2000, 1500))
    data = write_jsonl(tmp_path / "d.jsonl", [sample("scan.png")])
    longest = {}
    for release in ("v1", "v1.5"):
        assert main(["data", "stats", str(data), "--no-plot", "--json", "--release", release]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["release"] == release
        longest[release] = doc["percentiles"]["sample_tokens"]["p100"]
    v1, v15 = PixelBounds(147384, 2822400), PixelBounds(112896, 1003520)
    assert longest["v1"] - longest["v1.5"] == image_tokens(1500, 2000, v1) - image_tokens(1500, 2000, v15) > 1500
    assert main(["data", "stats", str(data), "--no-plot"]) == 0
    assert "release: not given (--release or --model): counted with v1's template marker" in capsys.readouterr().out
