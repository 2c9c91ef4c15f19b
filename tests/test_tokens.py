import json
import random
import shutil

import pytest

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.testing import RESOURCES
from paddle_ocrvl_sft.tokens import (
    AspectRatioError,
    PixelBounds,
    TextTokenCounter,
    estimate_text_tokens,
    image_tokens,
    sample_tokens,
    smart_resize,
)


def random_sizes(n: int, seed: int = 0):
    """Sizes across every branch: tiny sides, near the 200 aspect limit, far above max_pixels."""
    rng = random.Random(seed)
    sizes = []
    for i in range(n):
        branch = i % 5
        if branch == 0:  # one side under 28 px
            sizes.append((rng.randint(1, 27), rng.randint(1, 4000)))
        elif branch == 1:  # aspect ratio around 199..201
            short = rng.randint(1, 300)
            sizes.append((short, round(short * rng.uniform(198.5, 201.5))))
        elif branch == 2:  # far above max_pixels
            sizes.append((rng.randint(2000, 30000), rng.randint(2000, 30000)))
        else:  # ordinary document crops and pages
            sizes.append((rng.randint(1, 5000), rng.randint(1, 5000)))
    return [(h, w) if rng.random() < 0.5 else (w, h) for h, w in sizes]


def reference_smart_resize():
    pytest.importorskip("torch")
    module = pytest.importorskip("transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl")
    return module.smart_resize


@pytest.mark.parametrize("bounds", [PixelBounds(), PixelBounds(28 * 28 * 4, 28 * 28 * 64)])
def test_smart_resize_equals_transformers_on_13000_sizes(bounds):
    reference = reference_smart_resize()
    compared = refused = 0
    for h, w in random_sizes(13000):
        try:
            expected = reference(h, w, factor=28, min_pixels=bounds.min_pixels, max_pixels=bounds.max_pixels)
        except ValueError as exc:
            assert "aspect ratio" in str(exc)
            with pytest.raises(AspectRatioError):
                smart_resize(h, w, bounds)
            refused += 1
            continue
        assert smart_resize(h, w, bounds) == expected, (h, w)
        compared += 1
    assert compared > 10000 and refused > 100  # both outcomes were exercised


def test_aspect_ratio_boundary():
    assert smart_resize(28, 28 * 199) == (28, 28 * 199)
    assert smart_resize(28, 28 * 200) == (28, 28 * 200)
    with pytest.raises(AspectRatioError):
        smart_resize(28, 28 * 201)


def test_released_model_bounds_are_188_to_3600_tokens():
    assert image_tokens(10, 10) >= 188
    assert image_tokens(100000, 100000) == 3600
    assert image_tokens(28 * 30, 28 * 40) == 30 * 40


def test_bounds_from_model_dir(tmp_path):
    shutil.copy(RESOURCES / "preprocessor_config.json", tmp_path)  # the released file (test_testing checks it)
    assert PixelBounds.from_model_dir(tmp_path) == PixelBounds(147384, 2822400)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"min_pixels": 784, "max_pixels": 7840}}))
    bounds = PixelBounds.from_model_dir(tmp_path)
    assert bounds == PixelBounds(784, 7840)
    assert image_tokens(2000, 2000, bounds) == 9  # 3x3 under a 10-token cap


def test_bounds_from_model_dir_errors(tmp_path):
    with pytest.raises(UserError, match="preprocessor_config.json: not found"):
        PixelBounds.from_model_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(UserError, match="min_pixels/max_pixels"):
        PixelBounds.from_model_dir(tmp_path)


def test_text_estimate_errs_high_for_non_ascii():
    assert estimate_text_tokens("abcd" * 10) == 10
    assert estimate_text_tokens("发票号码") == 4
    assert estimate_text_tokens("") == 0


def test_sample_tokens_adds_template_markers():
    count = TextTokenCounter()
    bare = sample_tokens([100], [("OCR:", "abcd")], count)
    assert bare == 1 + (100 + 2) + count("OCR:") + count("abcd") + count.turn_overhead
    assert sample_tokens([100, 50], [("OCR:", "abcd")], count) == bare + 52


def test_exact_counter_needs_a_tokenizer_model(tmp_path):
    with pytest.raises(UserError, match="tokenizer.model: not found"):
        TextTokenCounter(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        TextTokenCounter(tmp_path)


@pytest.mark.slow
def test_exact_counter_equals_the_hf_tokenizer_per_text_segment(tmp_path):
    """The tiny model's tokenizer (released added tokens at their released ids) through transformers."""
    from paddle_ocrvl_sft.testing import build_tiny_model

    transformers = pytest.importorskip("transformers")
    base = build_tiny_model(tmp_path / "base", "base")
    hf = transformers.AutoTokenizer.from_pretrained(base)
    count = TextTokenCounter(base)
    texts = ["OCR:", 'OCR:{"TOTAL": "", "ITEMS": []}', "Table Recognition:", "<fcel>分组<fcel>频数<nl><fcel>[41,51)<ecel><nl>",
             "TOTAL 12.50\nDATE 01.02.2024", "发票号码 12271524", "<|LOC_100|><|LOC_10|>", "User: ", "\nAssistant: ", ""]
    assert [count(t) for t in texts] == [len(hf(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert count("<fcel>") == 1 and count("<|LOC_100|>") == 1
