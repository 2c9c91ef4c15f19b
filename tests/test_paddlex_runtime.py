"""Runtime mode against the REAL installed (unpatched) PaddleX PaddleOCR-VL pipeline code.

The pipeline is built with ``initial_predictor=False`` (no model is loaded) and a spy stands in
for the VL-rec predictor; everything between ``predict`` and the predictor is paddlex's own code.
"""

from __future__ import annotations

import types

import pytest

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.paddlex_runtime import UpstreamChanged, inner_pipelines, predict_with_prompt
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS

KIE = 'OCR:{"发票号码": "", "Items": [], "FORMULA_ID": ""}'


class SpyPredictor:
    """Records the queries the pipeline hands to the VL recognition model."""

    def __init__(self, model_name: str = "PaddleOCR-VL-0.9B"):
        self.model_name = model_name  # what a real VL-rec predictor carries
        self.queries = []
        self.batch_sampler = types.SimpleNamespace(batch_size=1)

    def predict(self, inputs, *args, **kwargs):
        inputs = list(inputs)
        self.queries += [item["query"] for item in inputs]
        return [{"result": f"answer to {item['query']}"} for item in inputs]


def spy_pipeline(use_queues: bool = False, pipeline_class: str = "PaddleOCRVLPipeline",
                 model_name: str = "PaddleOCR-VL-0.9B"):
    """paddlex's real ``PaddleOCRVLPipeline`` (the parallel wrapper and its inner pipeline; or the
    1.5/1.6 pipeline class) with the attributes its ``__init__`` would set from the default config,
    and a spy predictor named ``model_name``."""
    import numpy as np
    from paddlex.inference.common.batch_sampler import ImageBatchSampler
    from paddlex.inference.common.reader import ReadImage
    from paddlex.inference.pipelines.components import CropByBoxes
    from paddlex.inference.pipelines.paddleocr_vl import pipeline as module

    pipeline = getattr(module, pipeline_class)(config={}, device="cpu", initial_predictor=False)
    spy = SpyPredictor(model_name)
    settings = dict(
        use_doc_preprocessor=False, use_layout_detection=True, use_chart_recognition=False,
        use_seal_recognition=False, use_ocr_for_image_block=False, format_block_content=False,
        merge_layout_blocks=True, markdown_ignore_labels=[], use_queues=use_queues, layout_prep_cpu_workers=0,
        vl_rec_model=spy, batch_sampler=ImageBatchSampler(batch_size=1), img_reader=ReadImage(format="BGR"),
        crop_by_boxes=CropByBoxes(),
    )  # fmt: skip
    for key, value in settings.items():
        setattr(pipeline._pipeline, key, value)
    page = np.full((64, 96, 3), 255, dtype=np.uint8)
    return pipeline, spy, page


@pytest.fixture(scope="module")
def real():
    return spy_pipeline()


@pytest.mark.slow
def test_stock_pipeline_rejects_a_custom_prompt(real):
    """The premise: unpatched paddlex refuses the prompt (runtime mode exists for this)."""
    pipeline, _, page = real
    with pytest.raises(AssertionError, match="prompt_label"):
        list(pipeline.predict(page, use_layout_detection=False, prompt_label=KIE))


@pytest.mark.slow
@pytest.mark.parametrize("use_queues", [False, True])
def test_custom_prompt_reaches_the_predictor_verbatim(use_queues):
    pipeline, spy, page = spy_pipeline(use_queues=use_queues)
    results = predict_with_prompt(pipeline, page, KIE)
    assert spy.queries == [KIE]
    assert len(results) == 1
    [block] = results[0]["parsing_res_list"]
    assert block.content == f"answer to {KIE}"
    assert pipeline._pipeline.vl_rec_model is spy  # the swap is undone


@pytest.mark.slow
@pytest.mark.parametrize("label", ["ocr", "OCR", "table", "Formula", "chart", "spotting", "seal"])
def test_builtin_labels_run_the_stock_path(real, label):
    pipeline, spy, page = real
    del spy.queries[:]
    predict_with_prompt(pipeline, page, label)
    assert spy.queries == [BUILTIN_PROMPTS[label.lower()]]


@pytest.mark.slow
def test_unwraps_a_paddleocr_style_wrapper(real):
    pipeline, spy, page = real
    del spy.queries[:]
    wrapper = types.SimpleNamespace(paddlex_pipeline=pipeline, predict=pipeline.predict)  # like paddleocr.PaddleOCRVL
    assert inner_pipelines(wrapper) == [pipeline._pipeline]
    predict_with_prompt(wrapper, page, "OCR:{}")
    assert spy.queries == ["OCR:{}"]


@pytest.mark.parametrize("prompt", ["tabel", "", "invoice number"])
def test_a_prompt_that_is_neither_label_nor_query_is_refused(prompt):
    pipeline = _ChangedUpstream("OCR:")
    with pytest.raises(UserError, match="built-in label"):
        predict_with_prompt(pipeline, object(), prompt)
    assert pipeline.vl_rec_model.queries == []


def test_refuses_arguments_it_sets_itself():
    with pytest.raises(UserError, match="prompt_label"):
        predict_with_prompt(_ChangedUpstream("OCR:"), object(), KIE, prompt_label="ocr")


class _ChangedUpstream:
    """A pipeline whose shape moved on: it hands the predictor another query, or none at all."""

    def __init__(self, query):
        self.vl_rec_model, self.query = SpyPredictor(), query

    def predict(self, input, **kwargs):
        if self.query is not None:
            self.vl_rec_model.predict([{"image": input, "query": self.query}])
        yield {"parsing_res_list": []}


@pytest.mark.parametrize(
    "pipeline, message",
    [
        (_ChangedUpstream("Text Recognition:"), "received 'Text Recognition:'"),
        (_ChangedUpstream(None), "without calling vl_rec_model.predict"),
        (types.SimpleNamespace(predict=lambda *a, **k: iter([{}])), "no vl_rec_model"),
    ],
)
def test_upstream_changes_raise_clearly(pipeline, message):
    with pytest.raises(UpstreamChanged, match=message) as err:
        predict_with_prompt(pipeline, object(), KIE)
    assert "patches/paddlex_custom_prompt.json" in str(err.value)
