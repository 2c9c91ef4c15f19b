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
    split_dataset(src, out / "t3.jsonl", out / "v3.jsonl", val_fraction=0.2, seed=4)
    assert images_of(out / "v3.jsonl") != images_of(out / "v.jsonl")  # another seed, other images


def test_stratified_by_kind():
    groups = [f"g{i}" for i in range(100)]
    kinds = ["table"] * 10 + ["ocr"] * 90
    val = assign_validation(groups, kinds, 0.1, seed=0)
    chosen = Counter(k for g, k in zip(groups, kinds) if g in val)
    assert chosen == {"table": 1, "ocr": 9}


def test_samples_sharing_any_image_stay_on_one_side(tmp_path):
    for name in "abcdefgh":
        write_image(tmp_path / f"{name}.png", (60, 40))

    def two(x, y, answer):
        return {**sample(url=f"{x}.png", answer=answer), "image_info": [
            {"matched_text_index": 0, "image_url": f"{x}.png"}, {"matched_text_index": 0, "image_url": f"{y}.png"}]}

    rows = [two("a", "b", "1"), two("c", "b", "2"), sample(url="c.png", answer="3"),  # a-b-c linked through b and c
            *(sample(url=f"{n}.png", answer=n) for n in "defgh")]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    for seed in range(8):
        split_dataset(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", val_fraction=0.4, seed=seed, force=True)
        sides = [{u["image_url"] for line in (tmp_path / f).read_text().splitlines() for u in json.loads(line)["image_info"]}
                 for f in ("t.jsonl", "v.jsonl")]
        assert not sides[0] & sides[1], seed


def test_a_small_kind_still_gets_a_validation_group():
    groups, kinds = [f"g{i}" for i in range(12)], ["table"] * 2 + ["ocr"] * 10
    val = assign_validation(groups, kinds, 0.1, seed=0)
    assert sum(1 for g, k in zip(groups, kinds) if g in val and k == "table") == 1  # round(0.2) would be 0


def test_outputs_never_replace_the_input(tmp_path):
    src = write_jsonl(tmp_path / "a.train.jsonl", [sample()])
    with pytest.raises(UserError, match="would replace an input"):
        split_dataset(src, src, tmp_path / "a.val.jsonl", force=True)


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


def test_an_empty_dataset_is_refused(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="no samples"):
        split_dataset(empty, tmp_path / "t.jsonl", tmp_path / "v.jsonl")
    assert not (tmp_path / "t.jsonl").exists()


def test_one_image_cannot_be_split_and_says_why(tmp_path, capsys):
    write_image(tmp_path / "img.png", (60, 40))
    src = write_jsonl(tmp_path / "d.jsonl", [sample(prompt=f'OCR:{{"F{i}": ""}}', answer=str(i)) for i in range(4)])
    for val in ("0.5", "0.1"):  # the one group goes to validation, or stays in train
        assert main(["data", "split", str(src), "--val", val, "--allow-uneven"]) == 1
        err = capsys.readouterr().err
        side = "train" if val == "0.5" else "validation"
        assert f"the {side} side would be empty" in err and "the 4 samples share 1 image(s), the largest group holding 4" in err
        assert "add images" in err and not list(tmp_path.glob("d.*.jsonl"))


def test_a_split_far_from_the_asked_fraction_is_refused_unless_allowed(tmp_path, capsys):
    # two images: one with 9 prompts, one with 1; --val 0.5 can only give 10% or 90%
    for name in ("a", "b"):
        write_image(tmp_path / f"{name}.png", (60, 40))
    rows = [sample(url="a.png", prompt=f'OCR:{{"F{i}": ""}}', answer=str(i)) for i in range(9)] + [sample(url="b.png")]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError, match=r"validation would get (1|9) of 10 samples \((10|90)%\) for the 50% asked: .*"
                                        r"share 2 image\(s\), the largest group holding 9; try another --val or --seed, "
                                        r"or pass --allow-uneven"):
        split_dataset(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", val_fraction=0.5)
    assert not (tmp_path / "t.jsonl").exists()
    assert main(["data", "split", str(src), "--val", "0.5", "--allow-uneven"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("warning: validation would get") and "train:" in out


@pytest.mark.parametrize("val_samples,fraction,fine", [
    (10, 0.1, True), (5, 0.1, True), (20, 0.1, True), (4, 0.1, False), (21, 0.1, False),
    (50, 0.5, True), (24, 0.5, False), (80, 0.5, False), (0, 0.3, False), (100, 0.3, False),
])
def test_uneven_means_a_side_off_by_more_than_a_factor_of_two(val_samples, fraction, fine):
    from paddle_ocrvl_sft.data.split import uneven_split

    sizes = Counter({f"g{i}": 1 for i in range(100)})
    assert (uneven_split(sizes, val_samples, fraction) is None) == fine
