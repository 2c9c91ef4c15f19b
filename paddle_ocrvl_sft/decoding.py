"""Greedy decoding of PaddleOCR-VL on PyTorch with a static KV cache and CUDA-graph steps.

What ``predict``/``eval``/``serve --backend transformers`` run with ``--kv-cache static`` (the
default). transformers' ``generate`` drives every new token from Python (logits processors,
stopping criteria, input preparation) and, with its own static cache, compiles one decoding step
per batch shape (about 30 s each on an H200, docs/benchmarks.md). Here the model's own forward is
called as it is (vision tower, projector, language model, ``lm_head``: nothing re-implemented) and:

* **rows are prepared one by one on CPU threads** (:func:`row_from_inputs`): the processor's output
  for one image + prompt, pixels kept as uint8 (a quarter of the bytes to copy to the GPU) and the
  3D rotary positions computed on the CPU with the model's own ``get_rope_index``;
* **one KV store** of shape ``[rows, kv_heads, length, head_dim]`` per layer is shared by every
  batch; a batch of B rows runs in the smallest *batch bucket* >= B (extra rows are idle) and reads
  the cache up to the smallest *length bucket* past its current position (:func:`kv_bucket`), so
  decoding costs what the batch really holds, not the longest answer it might have;
* **each decoding step is one CUDA graph** per (batch bucket, length bucket): the token choice
  (argmax, end-of-sequence handling, per-row caps) happens inside the graph, so the host only
  replays graphs and looks at the rows every ``check_every`` steps. Capturing a graph takes
  about 0.1 s on an H200 (no compiler), so buckets are cheap; :meth:`StaticDecoder.warmup` captures them up
  front (``serve`` reports ``warming`` meanwhile). On CPU the same step runs eagerly.
* **a row ends on its own**: at its end-of-sequence token, at its own cap, or when ``row_stop``
  says so; ``on_done`` is called for it at the next check, while the others go on.

Outputs equal ``model.generate(..., do_sample=False)`` token for token (tests/test_decoding.py
checks it, mixed prompt lengths, caps and buckets included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CHECK_EVERY = 8  # decoding steps between two looks at the rows (one host-device sync each)


def kv_bucket(positions: int) -> int:
    """The cache length a batch reads for ``positions`` cached tokens: multiples of 256 up to 2048,
    of 1024 up to 8192, of 4096 beyond (few shapes, and never much more than is needed)."""
    step = 256 if positions <= 2048 else 1024 if positions <= 8192 else 4096
    return -(-positions // step) * step


def batch_bucket(rows: int, buckets: Sequence[int]) -> int:
    """The smallest batch bucket that holds ``rows`` (``rows`` itself past the largest)."""
    return next((b for b in sorted(buckets) if b >= rows), rows)


@dataclass
class Row:
    """One image + prompt, ready for the model (CPU tensors, no padding)."""

    input_ids: Any  # [L] int64
    mm_token_type_ids: Any  # [L]
    pixel_values: Any  # [patches, 3, 14, 14] uint8, unscaled (0..255)
    image_grid_thw: Any  # [images, 3]
    positions: Any  # [3, L] rotary positions (the model's get_rope_index)
    rope_delta: int
    cap: int  # most new tokens for this row

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def row_from_inputs(model, inputs, cap: int) -> Row:
    """A :class:`Row` from the processor's output for ONE image and prompt (``do_rescale=False``).

    Thread-safe: ``get_rope_index`` reads only the model's config.
    """
    import torch

    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError(f"row_from_inputs takes one row, got {ids.shape[0]}")
    types = inputs["mm_token_type_ids"]
    grid = inputs["image_grid_thw"]
    positions, delta = model.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid)
    pixels = inputs["pixel_values"]
    if pixels.dtype != torch.uint8:  # unscaled PIL pixels are whole numbers: uint8 holds them exactly
        pixels = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return Row(input_ids=ids[0], mm_token_type_ids=types[0], pixel_values=pixels, image_grid_thw=grid,
               positions=positions[:, 0], rope_delta=int(delta.reshape(-1)[0]), cap=int(cap))


class _StepCache:
    """The KV cache during one decoding step: writes at ``position``, attention reads [0, bucket)."""

    def __init__(self, keys, values, position):
        self.keys, self.values, self.position = keys, values, position

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        index = self.position.view(1)
        self.keys[layer_idx].index_copy_(2, index, key_states)
        self.values[layer_idx].index_copy_(2, index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]


class _State:
    """Device buffers a decoding step reads and writes in place (fixed addresses for CUDA graphs)."""

    def __init__(self, rows: int, width: int, device, pad_token_id: int):
        import torch

        long = dict(dtype=torch.long, device=device)
        self.rows, self.width = rows, width
        self.tok = torch.full((rows,), pad_token_id, **long)  # last token of each row
        self.pad = torch.zeros(rows, **long)  # left padding of each row
        self.delta = torch.zeros(rows, **long)  # rotary offset of each row (get_rope_index)
        self.cap = torch.zeros(rows, **long)
        self.finished = torch.ones(rows, dtype=torch.bool, device=device)
        self.out = torch.full((rows, width), pad_token_id, **long)  # new tokens
        self.step = torch.zeros((), **long)  # index of the next new token
        self.position = torch.zeros((), **long)  # cache index the next token is written at
        self.min_new = torch.zeros((), **long)

    def copy_from(self, old: "_State") -> None:
        rows, width = old.rows, old.width
        for name in ("tok", "pad", "delta", "cap", "finished"):
            getattr(self, name)[:rows].copy_(getattr(old, name))
        self.out[:rows, :width].copy_(old.out)
        for name in ("step", "position", "min_new"):
            getattr(self, name).copy_(getattr(old, name))


class StaticDecoder:
    """Greedy decoding over a shared static KV cache; one thread uses it at a time.

    ``model``: a ``PaddleOCRVLForConditionalGeneration`` in eval mode; ``pixel_mean``/``pixel_std``/
    ``rescale``: the image processor's normalization, applied on the device. ``graphs``: replay
    decoding steps as CUDA graphs (default: on CUDA devices).
    """

    def __init__(self, model, *, pad_token_id: int, stop_token_ids: Sequence[int], pixel_mean, pixel_std,
                 rescale: float, batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS, graphs: bool | None = None,
                 check_every: int = CHECK_EVERY):
        import torch

        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        text = model.config.text_config
        self.layers = text.num_hidden_layers
        self.kv_heads = text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.pad_token_id = int(pad_token_id)
        self.stop_ids = torch.tensor(sorted(set(int(t) for t in stop_token_ids)), dtype=torch.long, device=self.device)
        self.batch_buckets = tuple(sorted(set(batch_buckets)))
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.check_every = max(1, check_every)
        self.mean = torch.tensor(pixel_mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(pixel_std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.rescale = float(rescale)
        self.min_value = torch.finfo(self.dtype).min
        self._store_shape = (0, 0)  # (rows, length) of the KV store
        self._keys: list = []
        self._values: list = []
        self._state: _State | None = None
        self._kv_range = None
        self._graphs: dict[tuple[int, int], Any] = {}
        self._pool = None
        self._warm = False
        self.stats = {"graphs_captured": 0, "store_allocations": 0, "batches": 0, "new_tokens": 0}

    # --- public ------------------------------------------------------------------------------------

    def run(self, rows: Sequence[Row], on_done: Callable[[int, list[int]], None], *, min_new_tokens: int = 0,
            row_stop: Callable[[list[int]], bool] | None = None) -> None:
        """Decode ``rows`` (at most the largest batch bucket) together; ``on_done(i, new_token_ids)``
        for each row as it ends (its end-of-sequence token included, as ``generate`` returns it)."""
        import torch

        if not rows:
            return
        with torch.inference_mode():
            self._run(list(rows), on_done, min_new_tokens, row_stop)

    def warmup(self, prompt_length: int, batch_buckets: Sequence[int] | None = None) -> None:
        """Capture the decoding step of every batch bucket for prompts of about ``prompt_length``
        tokens (and allocate the KV store for the largest), before the first request needs them."""
        import torch

        buckets = sorted(batch_buckets or self.batch_buckets)
        with torch.inference_mode():
            length = kv_bucket(prompt_length + 1)
            self._ensure(buckets[-1], length, 1)
            for bucket in buckets:
                state = self._state
                state.position.fill_(prompt_length)
                state.step.zero_()
                state.finished[:bucket].fill_(True)
                if self.graphs:
                    self._graph(bucket, length)
                else:
                    self._step(bucket, length)

    # --- one batch -----------------------------------------------------------------------------------

    def _run(self, rows: list[Row], on_done, min_new_tokens: int, row_stop) -> None:
        import torch

        count = len(rows)
        bucket = batch_bucket(count, self.batch_buckets)
        self.stats["batches"] += 1
        longest = max(r.length for r in rows)
        caps = [max(1, r.cap) for r in rows]
        most = max(caps)
        self._ensure(bucket, kv_bucket(longest + 1), most)
        logits = self._prefill(rows, longest)

        state = self._state
        pads = [longest - r.length for r in rows]
        host = lambda values: torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)
        state.tok[:bucket].fill_(self.pad_token_id)
        state.pad[:bucket].zero_()
        state.delta[:bucket].zero_()
        state.cap[:bucket].zero_()
        state.finished[:bucket].fill_(True)
        state.out[:bucket].fill_(self.pad_token_id)
        state.pad[:count].copy_(host(pads))
        state.delta[:count].copy_(host([r.rope_delta for r in rows]))
        state.cap[:count].copy_(host(caps))
        state.finished[:count].fill_(False)
        state.step.zero_()
        state.position.fill_(longest - 1)  # _choose moves it to `longest`, where the first new token goes
        state.min_new.fill_(min_new_tokens)
        self._choose(logits, count)

        done = [False] * count
        stopped_at: dict[int, int] = {}  # rows ended by row_stop: their length
        steps = 1  # new tokens so far (the prefill chose the first)
        position = longest  # where the next step writes
        while True:
            if steps >= most or steps % self.check_every == 0:
                finished = self._state.finished[:count].tolist()  # _ensure may have made a new state
                if row_stop is not None:
                    self._stop_rows(row_stop, finished, steps, stopped_at)
                self._report(finished, done, steps, caps, stopped_at, on_done)
                if all(done) or steps >= most:
                    break
            length = kv_bucket(position + 1)
            if length > self._store_shape[1]:
                self._ensure(bucket, length, most)
            if self.graphs:
                self._graph(bucket, length).replay()
            else:
                self._step(bucket, length)
            steps += 1
            position += 1
        for i in range(count):  # rows still open at `most` steps end at their cap
            if not done[i]:
                self._report([True] * count, done, steps, caps, stopped_at, on_done)
                break

    def _prefill(self, rows: list[Row], longest: int):
        """The model's forward over the prompts (vision tower included); logits of the last position."""
        import torch

        count = len(rows)
        ids = torch.full((count, longest), self.pad_token_id, dtype=torch.long)
        types = torch.zeros((count, longest), dtype=rows[0].mm_token_type_ids.dtype)
        positions = torch.zeros((3, count, longest), dtype=torch.long)
        for b, row in enumerate(rows):
            start = longest - row.length
            ids[b, start:] = row.input_ids
            types[b, start:] = row.mm_token_type_ids
            positions[:, b, start:] = row.positions
        pads = torch.tensor([longest - r.length for r in rows], dtype=torch.long)
        pixels = torch.cat([r.pixel_values for r in rows])
        grid = torch.cat([r.image_grid_thw for r in rows])
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        move = lambda t: t.to(self.device, non_blocking=True)
        ids, types, positions, pads, pixels, grid = map(move, (ids, types, positions, pads, pixels, grid))
        pixels = ((pixels.float() * self.rescale - self.mean) / self.std).to(self.dtype)

        # The model's own forward as generate's first step calls it (its own causal + padding mask,
        # flash attention when no row is padded), into a DynamicCache copied to the store after.
        mask = (torch.arange(longest, device=self.device)[None, :] >= pads[:, None]).long()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=pixels,
                         image_grid_thw=grid, mm_token_type_ids=types, use_cache=True, logits_to_keep=1)
        for layer, keys, values in zip(out.past_key_values.layers, self._keys, self._values):
            keys[:count, :, :longest].copy_(layer.keys)
            values[:count, :, :longest].copy_(layer.values)
        return out.logits[:, -1, :]

    def _choose(self, logits, rows: int) -> None:
        """Greedy choice for rows [:rows], in place: what a decoding step ends with (also in the graph)."""
        import torch

        s = self._state
        logits = logits.float()
        stops = logits.index_select(1, self.stop_ids)
        early = s.step < s.min_new  # min_new_tokens: no end of sequence yet
        logits.index_copy_(1, self.stop_ids, torch.where(early, torch.full_like(stops, float("-inf")), stops))
        chosen = logits.argmax(-1)
        finished = s.finished[:rows]
        chosen = torch.where(finished, torch.full_like(chosen, self.pad_token_id), chosen)
        s.out[:rows].index_copy_(1, s.step.view(1), chosen.view(rows, 1))
        finished |= (chosen[:, None] == self.stop_ids[None, :]).any(-1) | (s.step + 1 >= s.cap[:rows])
        s.tok[:rows].copy_(chosen)
        s.step.add_(1)
        s.position.add_(1)

    def _step(self, bucket: int, length: int) -> None:
        """One decoding step for ``bucket`` rows reading ``length`` cache positions (graph-capturable)."""
        import torch

        s = self._state
        kv = self._kv_range[:length]
        pad = s.pad[:bucket]
        visible = (kv[None, :] <= s.position) & (kv[None, :] >= pad[:, None])
        mask = torch.where(visible, 0.0, self.min_value).to(self.dtype)[:, None, None, :]
        positions = (s.position - pad + s.delta[:bucket]).view(1, bucket, 1).expand(3, bucket, 1)
        cache = _StepCache([k[:bucket, :, :length] for k in self._keys],
                           [v[:bucket, :, :length] for v in self._values], s.position)
        out = self.model(input_ids=s.tok[:bucket].view(bucket, 1), attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        self._choose(out.logits[:, -1, :], bucket)

    # --- rows ending ------------------------------------------------------------------------------------

    def _stop_rows(self, row_stop, finished: list[bool], steps: int, stopped_at: dict[int, int]) -> None:
        open_rows = [i for i, f in enumerate(finished) if not f]
        if not open_rows:
            return
        tokens = self._state.out[open_rows, :steps].tolist()
        for i, row in zip(open_rows, tokens):
            if row_stop(row):
                stopped_at[i] = steps
                finished[i] = True
                self._state.finished[i] = True

    def _report(self, finished, done, steps, caps, stopped_at, on_done) -> None:
        new = [i for i, f in enumerate(finished) if f and not done[i]]
        if not new:
            return
        rows = self._state.out[new, :steps].tolist()
        stops = set(self.stop_ids.tolist())
        for i, row in zip(new, rows):
            end = stopped_at.get(i, min(caps[i], steps))
            for j, token in enumerate(row[:end]):
                if token in stops:
                    end = j + 1
                    break
            done[i] = True
            self.stats["new_tokens"] += end
            on_done(i, row[:end])

    # --- memory and graphs ---------------------------------------------------------------------------------

    def _ensure(self, rows: int, length: int, width: int) -> None:
        """KV store for ``rows`` x ``length`` and state for ``width`` new tokens; contents kept when it grows."""
        import torch

        have_rows, have_length = self._store_shape
        have_width = self._state.width if self._state is not None else 0
        if rows <= have_rows and length <= have_length and width <= have_width:
            return
        # Grow by half again at least: few reallocations (each drops the captured graphs).
        rows = max(rows, have_rows)
        length = kv_bucket(max(length, have_length + have_length // 2) if length > have_length else have_length)
        width = max(width, have_width + have_width // 2) if width > have_width else have_width
        shape = (rows, self.kv_heads, length, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        for new, old in zip(keys + values, self._keys + self._values):
            new[:have_rows, :, :have_length].copy_(old)
        state = _State(rows, -(-width // 256) * 256, self.device, self.pad_token_id)
        if self._state is not None:
            state.copy_from(self._state)
        self._keys, self._values, self._state = keys, values, state
        self._kv_range = torch.arange(length, device=self.device)
        self._store_shape = (rows, length)
        self._graphs.clear()
        self._pool = None  # the graphs held the pool: a new one comes with the next capture
        self.stats["store_allocations"] += 1

    def _graph(self, bucket: int, length: int):
        """The CUDA graph of one decoding step for this (batch bucket, length bucket), captured once."""
        import torch

        graph = self._graphs.get((bucket, length))
        if graph is not None:
            return graph
        if not self._warm:  # lazy library set-up happens outside capture, on a copy of the state
            saved = {name: getattr(self._state, name).clone() for name in ("tok", "finished", "out", "step", "position")}
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step(bucket, length)
            torch.cuda.current_stream().wait_stream(stream)
            for name, value in saved.items():
                getattr(self._state, name).copy_(value)
            self._warm = True
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._step(bucket, length)
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[(bucket, length)] = graph
        self.stats["graphs_captured"] += 1
        return graph
