"""Runtime mode: custom prompts through an UNPATCHED PaddleX PaddleOCR-VL pipeline, no file touched.

With layout detection off, stock PaddleX turns the whole page into one block labelled ``ocr`` and
queries the VL recognition model with ``"OCR:"`` (shared/reference/FACTS.md, "PaddleX"). Runtime
mode runs exactly that path and swaps the query for the custom prompt at the one place every
paddlex 3.3-3.7 release hands it to the model: ``<pipeline>.vl_rec_model.predict([{"image", "query"}])``.
If that hand-over ever looks different, it raises :class:`UpstreamChanged` instead of guessing.

Runtime mode is this Python API, :func:`predict_with_prompt(pipeline, input, prompt)
<predict_with_prompt>`, for code that drives the PaddleOCR-VL pipeline on an unpatched install
(e.g. a read-only site-packages). No CLI command uses it: ``predict`` calls the VL-rec predictor
directly and needs no patch at all. It works the same on a patched install (``patch apply``),
where the blocks keep the label ``ocr`` too. Heavy imports: none (the caller passes an
already-built pipeline).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS

_CARRIER_LABEL, _CARRIER_QUERY = "ocr", BUILTIN_PROMPTS["ocr"]
# The query swap is an attribute on a shared pipeline object: one custom-prompt call at a time,
# and built-in calls wait too, so they never meet a swapped predictor.
_LOCK = threading.RLock()


class UpstreamChanged(UserError):
    """PaddleX no longer has the shape runtime mode relies on."""

    def __init__(self, what: str):
        super().__init__(
            f"paddlex changed shape, runtime custom prompts cannot work: {what}. "
            "Use a paddlex release listed in patches/paddlex_custom_prompt.json (docs/patch.md)."
        )


def is_custom_prompt(prompt: str) -> bool:
    """A custom prompt is a PaddleOCR-VL query (``Task:payload``, e.g. ``OCR:{"NAME": ""}``): it
    contains ':', like every built-in query and unlike every label. Same rule as the file patch."""
    return ":" in prompt


def check_prompt(prompt: str) -> None:
    if not prompt or (prompt.lower() not in BUILTIN_PROMPTS and not is_custom_prompt(prompt)):
        raise UserError(
            f"prompt {prompt!r}: expected a built-in label ({', '.join(BUILTIN_PROMPTS)}) "
            "or a custom prompt containing ':' such as 'OCR:{\"NAME\": \"\"}'"
        )


def inner_pipelines(pipeline: Any) -> list:
    """The ``_PaddleOCRVLPipeline`` objects behind a ``paddleocr.PaddleOCRVL`` or a paddlex
    ``create_pipeline`` result (one per device), each checked to hold a ``vl_rec_model``."""
    obj = vars(pipeline).get("paddlex_pipeline", pipeline)  # paddleocr wraps the paddlex pipeline
    attrs = vars(obj)  # vars(), not getattr: the parallel wrapper forwards unknown attributes
    inner = attrs.get("_pipelines") or ([attrs["_pipeline"]] if "_pipeline" in attrs else [obj])
    for p in inner:
        predictor = vars(p).get("vl_rec_model")
        if predictor is None or not callable(getattr(predictor, "predict", None)):
            raise UpstreamChanged(f"{type(p).__name__} has no vl_rec_model with a predict() method")
    return list(inner)


class _QueryRewriter:
    """Stands in for the VL-rec predictor: forwards everything, rewriting ``"OCR:"`` queries."""

    def __init__(self, predictor: Any, prompt: str):
        self._predictor, self._prompt, self.calls = predictor, prompt, 0

    def predict(self, inputs, *args, **kwargs):
        inputs = list(inputs)
        for item in inputs:
            query = item.get("query") if isinstance(item, dict) else None
            if query != _CARRIER_QUERY:
                raise UpstreamChanged(f"the VL-rec predictor received {query!r} where {_CARRIER_QUERY!r} was expected")
        self.calls += len(inputs)
        return self._predictor.predict([{**item, "query": self._prompt} for item in inputs], *args, **kwargs)

    def __getattr__(self, name):  # batch_sampler, close, ...
        return getattr(self._predictor, name)


@contextlib.contextmanager
def _queries_rewritten(pipelines: list, prompt: str):
    rewriters = [_QueryRewriter(p.vl_rec_model, prompt) for p in pipelines]
    for p, r in zip(pipelines, rewriters):
        p.vl_rec_model = r
    try:
        yield rewriters
    finally:
        for p, r in zip(pipelines, rewriters):
            p.vl_rec_model = r._predictor


def predict_with_prompt(pipeline: Any, input: Any, prompt: str, **kwargs) -> list:
    """Run the whole page of each input through the VL model with ``prompt`` as the query.

    ``pipeline`` is a ``paddleocr.PaddleOCRVL`` or a paddlex PaddleOCR-VL pipeline; ``kwargs`` go
    to its ``predict`` (layout detection is always off: a prompt applies to the whole page).
    Built-in labels run the stock path unchanged. Returns the list of results.
    """
    check_prompt(prompt)
    clash = {"use_layout_detection", "prompt_label"} & kwargs.keys()
    if clash:
        raise UserError(f"predict_with_prompt sets {', '.join(sorted(clash))} itself")
    with _LOCK:
        if not is_custom_prompt(prompt):
            return list(pipeline.predict(input, use_layout_detection=False, prompt_label=prompt, **kwargs))
        with _queries_rewritten(inner_pipelines(pipeline), prompt) as rewriters:
            results = list(pipeline.predict(input, use_layout_detection=False, prompt_label=_CARRIER_LABEL, **kwargs))
    if results and not any(r.calls for r in rewriters):
        raise UpstreamChanged("the pipeline produced results without calling vl_rec_model.predict()")
    return results
