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


# --- releases: 1.5/1.6 count with their own image processor and template (releases.py) ----------------


def _pil_processor_module():
    pytest.importorskip("torch")  # transformers' image processors need it; CI installs it ([all])
    return pytest.importorskip("transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl")


def test_image_tokens_equal_transformers_processor_with_the_1_5_preprocessor():
    """transformers' own PaddleOCR-VL image processor (the PIL one: no torchvision here) loaded from
    the released 1.5 preprocessor_config.json, on 13000 random sizes and on real images."""
    from PIL import Image

    from paddle_ocrvl_sft import releases

    module = _pil_processor_module()
    release = releases.get("v1.5")
    processor = module.PaddleOCRVLImageProcessorPil.from_pretrained(release.resource_dir)
    bounds = PixelBounds.from_model_dir(release.resource_dir)
    assert bounds == PixelBounds(*release.pixel_bounds) == PixelBounds(processor.size.shortest_edge, processor.size.longest_edge)
    factor = processor.patch_size * processor.merge_size
    compared = 0
    for h, w in random_sizes(13000, seed=15):
        try:
            expected = module.smart_resize(h, w, factor=factor, min_pixels=processor.size.shortest_edge,
                                           max_pixels=processor.size.longest_edge)
        except ValueError:
            with pytest.raises(AspectRatioError):
                smart_resize(h, w, bounds)
            continue
        assert smart_resize(h, w, bounds) == expected, (h, w)
        compared += 1
    assert compared > 10000
    # whole images through the processor: below min_pixels, in bounds, above max_pixels (1.5's cap is
    # 1280 tokens where v1's is 3600), odd sizes
    rng = random.Random(1)
    sizes = [(64, 300), (28, 900), (500, 700), (1100, 1000), (2339, 1654), (3000, 400)]
    sizes += [(rng.randint(20, 2500), rng.randint(20, 2500)) for _ in range(24)]
    for h, w in sizes:
        grid = processor(images=[Image.new("RGB", (w, h), "white")], return_tensors="np")["image_grid_thw"][0]
        assert int(grid[0] * grid[1] * grid[2]) // processor.merge_size**2 == image_tokens(h, w, bounds), (h, w)
    assert image_tokens(2339, 1654, bounds) == 1260 < image_tokens(2339, 1654) == 3550  # the bounds matter (A4 at 200 dpi)


def _hf_processor(model_dir):
    """transformers' PaddleOCRVLProcessor over the model dir's tokenizer, image processor and template."""
    from transformers import AutoTokenizer, PaddleOCRVLProcessor

    module = _pil_processor_module()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, extra_special_tokens={"image_token": "<|IMAGE_PLACEHOLDER|>"})
    return PaddleOCRVLProcessor(image_processor=module.PaddleOCRVLImageProcessorPil.from_pretrained(model_dir),
                                tokenizer=tokenizer, chat_template=(model_dir / "chat_template.jinja").read_text(encoding="utf-8"))


SAMPLES = [  # (image sizes (h, w), turns)
    ([(300, 500)], [("OCR:", "TOTAL 12.50")]),
    ([(180, 320)], [('OCR:{"TOTAL": "", "DATE": ""}', '{"TOTAL": "12.50", "DATE": "01.02.2024"}')]),
    ([(900, 1200)], [("Spotting:", "<|LOC_10|><|LOC_20|>TOTAL")]),
    ([(400, 400)], [("Seal Recognition:", "公司印章 12271524")]),
    ([(60, 2000)], [("Table Recognition:", "<fcel>分组<fcel>频数<nl><fcel>[41,51)<ecel><nl>")]),
    ([(300, 500), (2339, 1654)], [("OCR:", "page one"), ('OCR:{"A": []}', '{"A": ["x", "y"]}')]),
]


def _messages(n_images: int, turns):
    messages = []
    for i, (prompt, answer) in enumerate(turns):
        content = [{"type": "image"}] * (n_images if i == 0 else 0) + [{"type": "text", "text": prompt}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages


@pytest.mark.slow
def test_whole_sample_length_equals_transformers_processor_and_the_1_5_template(tmp_path):
    """A sample's length as tokens.py counts it for 1.5 (its marker "\\nAssistant:\\n", its pixel
    bounds) is the length transformers' processor gives the 1.5 template's rendering, token for token
    for one-turn samples. A later turn has no image between "User: " and its prompt, so the joined
    text can merge that space into the prompt's first word: at most one token per later turn above."""
    from PIL import Image

    from paddle_ocrvl_sft import releases
    from paddle_ocrvl_sft.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "v1.5", release="v1.5")
    processor = _hf_processor(model)
    count = TextTokenCounter(model, releases.get("v1.5").assistant_marker)
    bounds = PixelBounds.from_model_dir(model)
    for sizes, turns in SAMPLES:
        text = processor.apply_chat_template(_messages(len(sizes), turns), add_generation_prompt=False)
        assert "\nAssistant:\n" in text and "\nAssistant: " not in text
        images = [Image.new("RGB", (w, h), "white") for h, w in sizes]
        ids = processor(images=images, text=[text], return_tensors="np")["input_ids"][0]
        ours = sample_tokens([image_tokens(h, w, bounds) for h, w in sizes], turns, count)
        if len(turns) == 1:
            assert ours == len(ids), turns
        else:
            assert 0 <= ours - len(ids) <= len(turns) - 1, turns


@pytest.mark.slow
def test_v1_counts_are_never_below_the_joined_template_text(tmp_path):
    """v1's marker ends with a space, which SentencePiece joins with an answer that starts with a word
    when the whole template text is tokenized at once: tokens.py counts texts one by one (as the
    trainers build their sequences), so a v1 count may be one token per turn above (and one more per
    later turn, see the 1.5 test), never below."""
    from PIL import Image

    from paddle_ocrvl_sft.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "v1", release="v1")
    processor = _hf_processor(model)
    count = TextTokenCounter(model)
    bounds = PixelBounds.from_model_dir(model)
    above = 0
    for sizes, turns in SAMPLES:
        text = processor.apply_chat_template(_messages(len(sizes), turns), add_generation_prompt=False,
                                             image_token="<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>")
        images = [Image.new("RGB", (w, h), "white") for h, w in sizes]
        n = len(processor(images=images, text=[text], return_tensors="np")["input_ids"][0])
        ours = sample_tokens([image_tokens(h, w, bounds) for h, w in sizes], turns, count)
        assert 0 <= ours - n <= 2 * len(turns) - 1, turns
        above += ours > n
    assert above  # the case exists (e.g. "\nAssistant: " + "TOTAL ...")
