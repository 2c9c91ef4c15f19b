import json
import random

from conftest import write_image, write_jsonl

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.kie import build_kie_dataset, field_shape, kie_turns
from paddle_ocrvl_sft.data.validate import validate_paths
from paddle_ocrvl_sft.prompts import kie_prompt, render_json

INVOICE = {
    "发票号码": "12271524",
    "购买方": {"名称": "深圳市购机汇网络有限公司", "纳税人识别号": "440300083885931"},
    "Items": [{"NAME": "2XLATTE", "TOTAL": "9.00"}],
    "TOTAL": "54.50",
}


def test_prompt_rendering_matches_seed_001_byte_for_byte():
    assert kie_prompt({"RECEIPT NUMBER": ""}) == 'OCR:{"RECEIPT NUMBER": ""}'
    assert render_json({"发票名称": "广东增值税专用发票"}) == '{"发票名称": "广东增值税专用发票"}'
    assert kie_prompt({}) == "OCR:{}"


def test_field_shapes():
    assert [field_shape(v) for v in ("a", 3, None, {"x": 1}, [1])] == ["", "", "", {}, []]


def test_turns_full_then_distinct_seeded_subsets_with_matching_targets():
    turns = kie_turns(INVOICE, subsets=6, max_fields=2, rng=random.Random(1))
    assert turns[0] == ("OCR:{}", render_json(INVOICE))
    prompts = [p for p, _ in turns[1:]]
    assert len(prompts) == len(set(prompts)) == 6
    for prompt, target in turns[1:]:
        query, answer = json.loads(prompt[4:]), json.loads(target)
        assert list(query) == list(answer) and 1 <= len(query) <= 2
        for name, shape in query.items():
            assert answer[name] == INVOICE[name] and shape == field_shape(INVOICE[name])
    again = kie_turns(INVOICE, subsets=6, max_fields=2, rng=random.Random(1))
    assert again == turns


def test_subsets_capped_by_what_exists():
    turns = kie_turns({"a": "1", "b": "2"}, subsets=10, max_fields=3, rng=random.Random(0), full=False)
    assert len(turns) == 3  # {a}, {b}, {a, b}


def test_build_dataset_validates_and_reports_bad_annotations(tmp_path):
    write_image(tmp_path / "ann" / "imgs" / "b0.png")
    ann = write_jsonl(tmp_path / "ann" / "ann.jsonl", [
        {"image": "imgs/b0.png", "data": INVOICE},
        {"image": "imgs/b0.png"},
        "{oops",
    ])
    out = tmp_path / "out" / "kie.jsonl"
    errors = []
    report = build_kie_dataset(ann, out, per_image=4, seed=7, on_error=errors.append)
    assert (report.rejected, report.written) == (2, False) and not out.exists()  # rejects: nothing written
    errors.clear()
    report = build_kie_dataset(ann, out, per_image=4, seed=7, skip_bad=True, on_error=errors.append)
    assert (report.images, report.samples, report.rejected, report.written) == (1, 5, 2, True)
    assert [e.split(": error: ")[0] for e in errors] == [f"{ann}:2", f"{ann}:3"]
    assert "data: required" in errors[0]
    assert validate_paths([out]).valid == 5
    first = json.loads(out.read_text().splitlines()[0])
    assert first["image_info"][0]["image_url"] == "../ann/imgs/b0.png"
    assert first["text_info"][0] == {"text": "OCR:{}", "tag": "mask"}


def test_directory_of_per_image_json_and_cli(tmp_path, capsys):
    write_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "ann").mkdir()
    for i in range(2):  # pretty-printed objects, as seed 001's generator writes them
        (tmp_path / "ann" / f"{i}.json").write_text(json.dumps({"image": "a.png", "data": {"K": str(i)}}, indent=2))
    (tmp_path / "ann" / "many.json").write_text(json.dumps([{"image": "a.png", "data": {"K": "x"}},
                                                            {"image": "a.png", "data": {"K": "y"}}], indent=2))
    out = tmp_path / "kie.jsonl"
    args = ["data", "kie", str(tmp_path / "ann"), "-o", str(out), "--image-root", str(tmp_path / "imgs"), "-n", "2"]
    assert main(args) == 0
    assert "4 images -> 8 samples" in capsys.readouterr().out
    first = out.read_bytes()
    assert main(args) == 1  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--force", "--seed", "0"]) == 0 and out.read_bytes() == first  # deterministic


def test_output_never_replaces_the_annotations(tmp_path, capsys):
    ann = write_jsonl(tmp_path / "ann.jsonl", [{"image": "a.png", "data": {"K": "1"}}])
    before = ann.read_bytes()
    assert main(["data", "kie", str(ann), "-o", str(ann), "--force"]) == 1
    assert "would replace an input" in capsys.readouterr().err and ann.read_bytes() == before
