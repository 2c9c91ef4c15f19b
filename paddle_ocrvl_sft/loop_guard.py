"""Runaway answers: a tail that repeats a short period, detected in tokens or in text.

A decoder that falls into a loop ("1234 1234 1234 ...") repeats until the token cap: the most
reported PaddleOCR-VL fine-tune failure after forgetting (PaddleOCR #17903, #17288, #16710). One
rule serves three uses:

* :func:`find_loop` on any sequence (token ids or characters): the shortest period ``p`` whose
  repetition runs to the end of the sequence (a last, partial copy included), how many times it
  repeats and where the loop starts;
* the opt-in guard (``predict``/``serve``/``eval --stop-repeats K``): a row whose last tokens are
  one period of at most :data:`MAX_PERIOD` tokens repeated K times, over at least :data:`MIN_SPAN`
  tokens, is stopped and cut after the first copy. The transformers backend stops the row during
  generation (:func:`transformers_stopping_criteria`); the paddle backend cannot pass a stopping
  criterion through PaddleX's predictor (``PaddleOCRVLForConditionalGeneration.generate`` forwards
  only ``max_new_tokens`` and ``use_cache``), so there the same rule cuts the generated ids AFTER
  generation (:func:`watch_paddlex` with :func:`cut_ids`: the answer is cut, no time is saved); a
  genai-server answer is cut as text (:func:`cut_text`);
* ``eval``'s runaway count (:func:`ends_in_loop`): an answer whose text ends in a loop.

Every answer a backend returns may say how it finished (:class:`Answer`): ``stop`` (end of
sequence), ``length`` (it hit the token cap) or ``repeats`` (the guard cut it); ``predict`` writes
this as ``"finish"`` in its records and ``eval`` counts the answers at the cap from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

MAX_PERIOD = 64  # tokens: longer cycles are rare and would make the check costly per generated token
MIN_SPAN = 32  # tokens: a short run ("-----", a few empty table cells) is not a loop
FINISHES = ("stop", "length", "repeats")

# eval's text rule (characters): a period of up to 200 characters repeated 4 times over 40 characters
TEXT_REPEATS, TEXT_MAX_PERIOD, TEXT_MIN_SPAN = 4, 200, 40


class Answer(str):
    """A backend's answer text that also says how generation ended (``finish``: one of
    :data:`FINISHES`, or None when the backend cannot tell). Everything else treats it as a str."""

    finish: str | None

    def __new__(cls, text: str, finish: str | None = None):
        obj = super().__new__(cls, text)
        obj.finish = finish
        return obj


def finish_of(text) -> str | None:
    return getattr(text, "finish", None)


@dataclass(frozen=True)
class Loop:
    period: int  # length of the repeated unit
    repeats: float  # span / period (the last copy may be partial)
    start: int  # index where the repeated span begins
    span: int  # elements from start to the end

    @property
    def cut(self) -> int:
        """Where to cut to keep everything before the loop and one copy of its unit."""
        return self.start + self.period


def find_loop(seq: Sequence, *, repeats: float, max_period: int = MAX_PERIOD, min_span: int = MIN_SPAN) -> Loop | None:
    """The shortest period ``p <= max_period`` whose repetition covers the end of ``seq`` at least
    ``repeats`` times and ``min_span`` elements (``seq[i] == seq[i - p]`` for every ``i`` in the
    span after its first copy); None if there is none.

    Whether there is a loop depends only on the last ``max(min_span, repeats * max_period)``
    elements (each period's walk back stops once its repetition is long enough), so the checks made
    during generation pass only that tail (:attr:`Guard.window`) and cost the same at every step.
    Once a loop is found, the walk goes on back to the loop's start (for :attr:`Loop.cut`): that
    part grows with the loop, up to the length of ``seq``.
    """
    n = len(seq)
    for p in range(1, min(max_period, n // 2) + 1):
        need = max(min_span, int(repeats * p + 0.999999))
        if need > n:
            continue
        run = 0  # how many trailing elements equal the one p before them
        i = n - 1
        while i >= p and seq[i] == seq[i - p]:
            run += 1
            i -= 1
            if run + p >= need:
                break
        if run + p >= need:
            # extend to the loop's real start (for the cut), bounded by the sequence
            while i >= p and seq[i] == seq[i - p]:
                run += 1
                i -= 1
            span = run + p
            return Loop(p, span / p, n - span, span)
    return None


def ends_in_loop(text: str) -> Loop | None:
    """``eval``'s runaway test on an answer's text (characters, :data:`TEXT_REPEATS` copies of a
    unit of up to :data:`TEXT_MAX_PERIOD` characters covering :data:`TEXT_MIN_SPAN` or more)."""
    return find_loop(text, repeats=TEXT_REPEATS, max_period=TEXT_MAX_PERIOD, min_span=TEXT_MIN_SPAN)


@dataclass(frozen=True)
class Guard:
    """``--stop-repeats K``: stop a row whose last tokens repeat a period of at most ``max_period``
    tokens ``repeats`` times over at least ``min_span`` tokens."""

    repeats: int
    max_period: int = MAX_PERIOD
    min_span: int = MIN_SPAN

    def __post_init__(self):
        if self.repeats < 2:
            raise ValueError(f"--stop-repeats must be >= 2, got {self.repeats}")

    @property
    def window(self) -> int:
        """The trailing tokens a check needs to look at."""
        return max(self.min_span, self.repeats * self.max_period) + self.max_period

    def loop(self, tokens: Sequence) -> Loop | None:
        return find_loop(tokens, repeats=self.repeats, max_period=self.max_period, min_span=self.min_span)

    def cut(self, tokens: Sequence) -> int | None:
        """The length to keep when the tokens end in a loop (before it plus one copy), else None."""
        found = self.loop(tokens)
        return None if found is None else found.cut


def first_loop_end(tokens: Sequence, guard: Guard) -> int | None:
    """The first position at which ``guard`` would have stopped generating ``tokens`` (a prefix
    length), or None: the post-hoc equivalent of checking after every generated token."""
    for end in range(1, len(tokens) + 1):
        if guard.loop(tokens[max(0, end - guard.window):end]) is not None:
            return end
    return None


def cut_ids(ids: Sequence[int], guard: Guard | None,
            stop_ids: int | Collection[int] | None = None) -> tuple[int, str]:
    """(kept length, finish) for one generated row: cut where the guard (if any) fires
    (``repeats``); else the row ends at its first stop token (``stop``: ``stop_ids``, one id or
    every id the decoder ends rows on) or runs to its end, the token cap (``length``)."""
    ids = list(ids)
    stops = {stop_ids} if isinstance(stop_ids, int) else set(stop_ids or ())
    end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
    stop = first_loop_end(ids[:end], guard) if guard is not None else None
    if stop is not None:
        window_start = max(0, stop - guard.window)
        kept = window_start + guard.cut(ids[window_start:stop])
        return kept, "repeats"
    return end, "stop" if end < len(ids) else "length"


def cut_text(text: str, guard: Guard) -> str:
    """A text answer cut after the first copy of its trailing loop, the guard's rule applied to
    characters (for backends whose tokens are not seen: genai-server). Unchanged without a loop."""
    found = find_loop(text, repeats=guard.repeats, max_period=guard.max_period, min_span=guard.min_span)
    return text if found is None else text[:found.cut]


def transformers_stopping_criteria(guard: Guard, prompt_length: int):
    """A transformers ``StoppingCriteria`` that stops each row whose generated tokens end in a loop
    (one bool per row: transformers then pads the finished row while the others go on)."""
    import torch
    from transformers import StoppingCriteria

    class RepeatStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tail = input_ids[:, max(prompt_length, input_ids.shape[1] - guard.window):].tolist()
            return torch.tensor([guard.loop(row) is not None for row in tail], dtype=torch.bool,
                                device=input_ids.device)

    return RepeatStop()


def watch_paddlex(predictor, guard: Guard | None) -> list:
    """Read each row's generated ids in a PaddleX VL-rec predictor (this predictor's model only):
    returns a list that every ``generate`` call appends the rows' finishes to, in input order.

    With a ``guard`` the ids of a row that ends in a loop are cut AFTER generation (the rest becomes
    end-of-sequence tokens, which PaddleX's own decoding then drops): PaddleX's
    ``PaddleOCRVLForConditionalGeneration.generate`` passes no stopping criterion on, so this is
    the only place the rule can act (docs/predict.md: post-hoc, no time saved).
    """
    from paddle_ocrvl_sft.errors import UserError

    model = getattr(predictor, "infer", None)
    tokenizer = getattr(getattr(predictor, "processor", None), "tokenizer", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    finishes: list = []
    if model is None or not callable(getattr(model, "generate", None)) or eos is None:
        if guard is not None:
            raise UserError("--stop-repeats: this PaddleX predictor does not expose its model's generate() "
                            "and tokenizer (PaddleX changed?): use --backend transformers")
        return finishes
    generate = model.generate

    def watched(inputs, **kwargs):
        out = generate(inputs, **kwargs)
        try:
            ids = out[0].numpy()
        except (AttributeError, IndexError, TypeError):
            ids = None
        if ids is None or ids.ndim != 2:
            if guard is not None:
                raise UserError("--stop-repeats: PaddleX's generate() returned no [batch, tokens] ids "
                                "(PaddleX changed?): use --backend transformers") from None
            return out  # finishes unknown: the backend sees fewer than it asked for and records none
        changed = False
        for row in ids:
            kept, finish = cut_ids(row.tolist(), guard, eos)
            finishes.append(finish)
            if finish == "repeats":
                row[kept:] = eos
                changed = True
        if not changed:
            return out
        import paddle

        return (paddle.to_tensor(ids, dtype=out[0].dtype), *out[1:])

    model.generate = watched
    return finishes

