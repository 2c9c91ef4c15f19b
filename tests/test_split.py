import json
from collections import Counter

import pytest
from conftest import sample, write_image, write_jsonl

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.split import assign_validation, split_dataset
from paddle_ocrvl_sft.data.validate import validate_paths
from paddle_ocrvl_sft.errors import UserError


def make_dataset(tmp_path, n_images=40, per_image=5):
    rows = []
    for i in range(n_images):
        write_image(tmp_path / "src" / f"{i}.png", (60, 40))
        prompt = "Table Recognition:" if i % 4 == 0 else "OCR:"
        rows += [sample(url=f"{i}.png", prompt=f'OCR:{{"F{j}": ""}}' if j else prompt, answer=f"a{i}-{j}") for j in range(per_image)]
    return write_jsonl(tmp_path / "src" / "all.jsonl", rows)


def images_of(path):
    return {json.loads(line)["image_info"][0]["image_url"] for line in path.read_text().splitlines()}


def test_split_groups_by_image_and_is_deterministic(tmp_path):
    src = make_dataset(tmp_path)
    out = tmp_path / "out"
    result = split_dataset(src, out / "t.jsonl", out / "v.jsonl", val_fraction=0.2, seed=3)
    assert result.train + result.val == 200
    assert 30 <= result.val <= 50
    assert not images_of(out / "t.jsonl") & images_of(out / "v.jsonl")
    assert validate_paths([out / "t.jsonl", out / "v.jsonl"]).ok  # image paths rewritten to resolve
    again = split_dataset(src, out / "t2.jsonl", out / "v2.jsonl", val_fraction=0.2, seed=3)
    assert (out / "v2.jsonl").read_text() == (out / "v.jsonl").read_text() and again.val == result.val
    other = split_dataset(src, out / "t3.jsonl", out / "v3.jsonl", val_fraction=0.2, seed=4)
    assert images_of(out / "v3.jsonl") != images_of(out / "v.jsonl") or other.val != result.val


def test_stratified_by_kind():
    groups = [f"g{i}" for i in range(100)]
    kinds = ["table"] * 10 + ["ocr"] * 90
    val = assign_validation(groups, kinds, 0.1, seed=0)
    chosen = Counter(k for g, k in zip(groups, kinds) if g in val)
    assert chosen == {"table": 1, "ocr": 9}


def test_multi_image_samples_join_groups():
    from paddle_ocrvl_sft.data.split import _UnionFind

    uf = _UnionFind()
    uf.union("a", "b")
    uf.union("c", "b")
    assert uf.find("a") == uf.find("c") != uf.find("d")


def test_bad_inputs(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [sample(), "{bad"])
    with pytest.raises(UserError, match=r"d.jsonl:2: not a valid sample"):
        split_dataset(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl")
    assert not (tmp_path / "t.jsonl").exists()
    with pytest.raises(UserError, match="between 0 and 1"):
        split_dataset(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", val_fraction=1.5)


def test_cli_split_refuses_overwrite(tmp_path, capsys):
    src = make_dataset(tmp_path, n_images=10, per_image=2)
    assert main(["data", "split", str(src), "--val", "0.3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and (tmp_path / "src" / "all.val.jsonl").exists()
    assert main(["data", "split", str(src)]) == 1
    assert "already exists" in capsys.readouterr().err
