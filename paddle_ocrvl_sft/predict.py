"""Run a (fine-tuned) PaddleOCR-VL on images with any prompt; KIE answers come back parsed.

Three backends:

* ``paddle``: PaddleX's VL-rec predictor called directly, under the bundle's release name
  (``create_predictor("PaddleOCR-VL-1.5-0.9B", model_dir=...).predict([{"image": ..., "query": ...}])``
  for a 1.5 bundle; ``releases.bundle_model_name``).
  The query reaches the chat template unchanged, so custom KIE prompts need no patch (the
  ``doc_parser`` pipeline is what rewrites them; shared/reference/FACTS.md, PaddleX inference).
* ``transformers``: PyTorch on an ``hf`` export (``export --format hf``): batched greedy decoding,
  prompts of similar length batched together, bf16 on GPU; the PIL image processor (no torchvision).
* ``genai-server``: an OpenAI-compatible ``chat.completions`` server (``paddleocr genai_server``,
  vLLM, ...) with the image as a data URL followed by the text query, as PaddleX's own client does.

A backend is called on one :class:`Job` and returns its text; ``batch(jobs)`` runs many at once.

KIE prompts are rendered by :mod:`paddle_ocrvl_sft.prompts`, the same code that writes training
data, so training and inference prompts match byte for byte.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from paddle_ocrvl_sft.bundle import check_model_dir, model_name_of
from paddle_ocrvl_sft.data.sample import (
    image_location,
    image_urls,
    is_remote,
    sample_turns,
)
from paddle_ocrvl_sft.data.validate import DATASET_SUFFIXES
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.io import atomic_open, iter_records
from paddle_ocrvl_sft.loop_guard import Answer, Guard, finish_of
from paddle_ocrvl_sft.prompts import (
    BUILTIN_PROMPTS,
    kie_prompt,
    prompt_kind,
    query_for_fields,
)
from paddle_ocrvl_sft.tokens import PixelBounds, image_tokens

BACKENDS = ("paddle", "transformers", "genai-server")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_PROMPT = BUILTIN_PROMPTS["ocr"]
# PaddleOCR's doc_parser pipeline asks for at most 4096 new tokens per block; transformers' own
# default (a 20-token max_length) would cut every answer short.
DEFAULT_MAX_NEW_TOKENS = 4096
# The image part of the prompt as training (ERNIEKit) and PaddleX lay it out: the chat template's
# own default, which transformers would otherwise replace with the bare placeholder token.
IMAGE_PROMPT = "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>"


@dataclass(frozen=True)
class Job:
    """One image and the prompt to ask about it; ``where``/``reference`` come from a dataset line.

    ``image`` is a path or URL, or (``serve``) an image already decoded in memory (a PIL image).
    ``max_new_tokens`` and ``pixels`` (the image processor's min/max pixels) override the
    backend's defaults for this job only: an API request may ask for them.
    """

    image: Any
    prompt: str
    where: str | None = None
    reference: str | None = None
    max_new_tokens: int | None = None
    pixels: PixelBounds | None = None


# --- prompts and inputs -------------------------------------------------------------------------


def resolve_prompt(prompt: str | None = None, fields: str | None = None, query: str | None = None) -> str | None:
    """``--prompt`` (a built-in name or raw text), ``--fields a,b`` or ``--query JSON`` -> prompt text.

    ``None`` means "not given": dataset lines keep their own prompt, images get ``OCR:``.
    """
    given = [name for name, value in (("--prompt", prompt), ("--fields", fields), ("--query", query)) if value is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)}: give only one of them")
    if fields is not None:
        names = [f.strip() for f in fields.split(",") if f.strip()]
        if not names:
            raise UsageError("--fields: expected comma-separated field names, e.g. --fields total,date")
        return kie_prompt(query_for_fields(names))
    if query is not None:
        try:
            obj = json.loads(query)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--query: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise UsageError('--query: must be a JSON object, e.g. \'{"total": "", "date": ""}\'')
        return kie_prompt(obj)
    if prompt is not None:
        return BUILTIN_PROMPTS.get(prompt, prompt)
    return None


def collect_jobs(inputs: Iterable[str | os.PathLike], prompt: str | None = None) -> list[Job]:
    """Images, folders of images (sorted, not recursive) and ERNIEKit ``.jsonl``/``.json`` datasets."""
    jobs: list[Job] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UserError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            jobs += [Job(str(p), prompt or DEFAULT_PROMPT) for p in images]
        elif path.suffix.lower() in DATASET_SUFFIXES and path.is_file():
            jobs += list(_dataset_jobs(path, prompt))
        elif path.is_file():
            jobs.append(Job(str(path), prompt or DEFAULT_PROMPT))
        else:
            raise UserError(f"{path}: no such image, folder or dataset file")
    return jobs


def _dataset_jobs(path: Path, prompt: str | None) -> Iterator[Job]:
    """One job per sample: its first image and first prompt (``--prompt`` etc. override the prompt)."""
    for record in iter_records(path):
        if record.error:
            raise UserError(f"{record.where}: {record.error}")
        sample = record.value
        try:
            url = image_urls(sample)[0]
            first_prompt, answer = sample_turns(sample)[0]
        except (KeyError, IndexError, TypeError) as exc:
            raise UserError(f"{record.where}: not an ERNIEKit sample (needs image_info[0].image_url and a "
                            f"'mask' text_info item; {type(exc).__name__}: {exc})") from None
        image = image_location(url, path)
        if not is_remote(url) and not Path(image).is_file():
            raise UserError(f"{record.where}: field image_info[0].image_url: {image} not found")
        yield Job(image, prompt or first_prompt, where=record.where, reference=answer)


def parse_kie(text: str) -> dict | None:
    """The model's KIE answer as an object (json_repair mends truncated/unquoted JSON); None if not one."""
    import json_repair

    try:
        value = json_repair.loads(text)
    except Exception:  # json_repair is lenient; anything it still rejects is "not an object"
        return None
    return value if isinstance(value, dict) else None


def to_record(job: Job, text: str) -> dict:
    """The output line: image, prompt, raw text, for KIE prompts the parsed ``fields``, and
    ``finish`` (stop / length / repeats) when the backend says how generation ended."""
    record = {"image": job.image, "prompt": job.prompt, "text": str(text)}
    if finish_of(text) is not None:
        record["finish"] = finish_of(text)
    if prompt_kind(job.prompt) == "kie":
        record["fields"] = parse_kie(text)
    if job.where:
        record["source"] = job.where
        record["reference"] = job.reference
    return record


# --- backends -----------------------------------------------------------------------------------


def paddle_predictor(model_dir: str | os.PathLike, model_name: str | None = None, device: str | None = "cpu"):
    """PaddleX's VL-rec predictor for a local dir (offline: the model-source check is turned off)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: not a directory")
    os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
    from paddlex import create_predictor

    name = model_name or model_name_of(model_dir)
    try:
        return create_predictor(name, model_dir=str(model_dir), device=device)
    except (ValueError, FileNotFoundError) as exc:
        hint = " (an ERNIEKit output dir? run `python -m paddle_ocrvl_sft export RUN_DIR --base BASE` first)"
        raise UserError(f"--model {model_dir}: PaddleX cannot load it: {exc}{hint}") from None


class PaddleBackend:
    def __init__(self, model_dir, *, model_name=None, device=None, max_new_tokens=None, release=None,
                 guard: Guard | None = None):
        from paddle_ocrvl_sft.loop_guard import watch_paddlex

        check_model_dir(model_dir)
        self.release = None  # unknown when --model-name is given
        if model_name is None:  # the bundle's release names it; files at odds with each other are refused
            from paddle_ocrvl_sft.releases import bundle_model_name

            model_name, detection = bundle_model_name(model_dir, release)
            self.release = detection.release.name
        self.model_name = model_name
        self.predictor = paddle_predictor(model_dir, model_name, device)
        self.max_new_tokens = max_new_tokens
        self.finishes = watch_paddlex(self.predictor, guard)  # filled by each generate() call, in order

    def __call__(self, job: Job) -> str:
        return self.batch([job])[0]

    def batch(self, jobs: list[Job]) -> list[str]:
        """PaddleX's predictor takes a list of inputs and batches them itself (one call per option set)."""
        texts: list[str] = [""] * len(jobs)
        for (cap, pixels), indices in group_by(jobs, lambda j: (j.max_new_tokens or self.max_new_tokens, j.pixels)).items():
            kwargs = {} if cap is None else {"max_new_tokens": cap}
            if pixels is not None:
                kwargs.update(min_pixels=pixels.min_pixels, max_pixels=pixels.max_pixels)
            inputs = [{"image": paddle_image(jobs[i].image), "query": jobs[i].prompt} for i in indices]
            self.finishes.clear()
            results = [result["result"] for result in self.predictor.predict(inputs, **kwargs)]
            finishes = list(self.finishes) if len(self.finishes) == len(results) else [None] * len(results)
            for i, text, finish in zip(indices, results, finishes):
                texts[i] = Answer(text, finish)
        return texts


def group_by(jobs: list[Job], key) -> dict:
    """Job indices by ``key(job)``, in first-seen order."""
    groups: dict = {}
    for i, job in enumerate(jobs):
        groups.setdefault(key(job), []).append(i)
    return groups


def paddle_image(image):
    """PaddleX takes a path/URL as it is, and in-memory images as BGR arrays."""
    if isinstance(image, str):
        return image
    import numpy as np

    return np.asarray(image.convert("RGB"))[:, :, ::-1].copy()


# Answers worth asking again: the request timed out, the server is busy or restarting (408, 429,
# 502, 503, 504), or the connection broke. Anything else (a 4xx for this request, a 500 from the
# model) is its answer.
RETRY_STATUSES = (408, 429, 502, 503, 504)


class GenAIServerBackend:
    """OpenAI ``chat.completions`` over HTTP with the stdlib (timeout on every request).

    ``imap(jobs)`` keeps ``concurrency`` requests in flight (the server batches them: vLLM,
    FastDeploy, SGLang, ``serve``) and yields each job's text or exception in the jobs' order.
    A transient failure (a dropped connection, a timeout, HTTP 408/429/502/503/504) is asked again
    up to ``retries`` times, after ``Retry-After`` when the server sends one, else after an
    exponential back-off from ``backoff`` seconds (with jitter), at most ``max_backoff``.
    """

    def __init__(self, server_url: str, *, model: str | None = None, max_new_tokens: int | None = None,
                 timeout: float = 600.0, concurrency: int = 16, retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 30.0, guard: Guard | None = None):
        if concurrency < 1 or retries < 0:
            raise UsageError(f"--concurrency {concurrency} / --retries {retries}: need >= 1 / >= 0")
        self.base = server_url.rstrip("/")
        self.timeout = timeout
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retried = 0  # requests asked again (all jobs): what a run reports
        self.guard = guard  # the server's tokens are not seen: its answers are cut as text (loop_guard.cut_text)
        self.model = model or self._first_model()

    def _request(self, path: str, body: dict | None = None) -> dict:
        url = self.base + path
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw.decode("utf-8"))
                except ValueError as exc:
                    raise UserError(f"--server-url {url}: answer is not JSON ({exc})") from None
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                if exc.code not in RETRY_STATUSES or attempt == self.retries:
                    raise UserError(f"--server-url {url}: HTTP {exc.code}: {detail}") from None
                self._wait(attempt, exc.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
                if attempt == self.retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise UserError(f"--server-url {url}: {getattr(exc, 'reason', None) or exc}{tries}") from None
                self._wait(attempt, None)
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        """Sleep before asking again: the server's ``Retry-After`` (seconds), else exponential back-off."""
        import random
        import time

        self.retried += 1
        try:
            delay = float(retry_after) if retry_after is not None else None
        except ValueError:  # an HTTP date: not worth parsing, back off instead
            delay = None
        if delay is None:
            delay = self.backoff * 2 ** attempt * random.uniform(0.5, 1.0)
        time.sleep(max(0.0, min(delay, self.max_backoff)))

    def _first_model(self) -> str:
        """The served model's name, as PaddleX's client finds it (first id of ``GET /models``)."""
        try:
            return self._request("/models")["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"--server-url {self.base}/models: no model listed (pass --server-model)") from None

    def __call__(self, job: Job) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url(job.image)}},
                {"type": "text", "text": job.prompt},
            ]}],
            "temperature": 0,
        }
        cap = job.max_new_tokens or self.max_new_tokens
        if cap is not None:
            body["max_completion_tokens"] = cap
        if job.pixels is not None:  # what PaddleX's client sends vLLM for a block's pixel bounds
            body["mm_processor_kwargs"] = {"min_pixels": job.pixels.min_pixels, "max_pixels": job.pixels.max_pixels}
        answer = self._request("/chat/completions", body)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"--server-url {self.base}/chat/completions: unexpected answer {str(answer)[:200]}") from None
        if not isinstance(text, str):  # "content": null (a refusal, a tool call): no answer, not the text "None"
            raise UserError(f"--server-url {self.base}/chat/completions: the answer has no text (message content "
                            f"{json.dumps(text)}, finish_reason {json.dumps(choice.get('finish_reason'))})")
        return server_answer(text, choice.get("finish_reason"), self.guard)

    def _outcome(self, job: Job):
        try:
            return self(job)
        except Exception as exc:  # one failed request is that job's error line, not the run's end
            return exc

    def imap(self, jobs: Iterable[Job]) -> Iterator:
        """Each job's text (or the exception it ended with), in order, ``concurrency`` in flight."""
        from collections import deque

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="genai")
        window: deque = deque()
        try:
            for job in jobs:
                window.append(pool.submit(self._outcome, job))
                if len(window) >= 2 * self.concurrency:  # bounded: results stream out in order
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:  # Ctrl-C or a consumer that stops: what has not started is not sent; the
            # requests already out are waited for (the interpreter would wait for them at exit anyway)
            pool.shutdown(wait=True, cancel_futures=True)

    def batch(self, jobs: list[Job]) -> list[str]:
        """All requests in flight (up to ``concurrency``); the first failure is raised (the answers
        that succeeded are lost with it: callers that can keep them use :meth:`imap`)."""
        texts = []
        for outcome in self.imap(jobs):
            if isinstance(outcome, Exception):
                raise outcome
            texts.append(outcome)
        return texts


def server_answer(text: str, finish_reason, guard: Guard | None) -> Answer:
    """An OpenAI answer's text and how it ended (``finish_reason`` stop / length), cut by the guard."""
    from paddle_ocrvl_sft.loop_guard import cut_text

    finish = finish_reason if finish_reason in ("stop", "length") else None
    if guard is not None:
        cut = cut_text(text, guard)
        if cut != text:
            return Answer(cut, "repeats")
    return Answer(text, finish)


def image_url(image) -> str:
    """Remote URLs as they are; local files as a ``data:`` URL (PNG/JPEG bytes unchanged, else PNG).

    An image in memory (a PIL image) is sent as PNG.
    """
    if isinstance(image, str) and is_remote(image):
        return image
    from PIL import Image

    if isinstance(image, str):
        raw = Path(image).read_bytes()
        with Image.open(image) as img:
            fmt = img.format
            if fmt not in ("PNG", "JPEG"):
                raw, fmt = _png_bytes(img), "PNG"
    else:
        raw, fmt = _png_bytes(image), "PNG"
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode("ascii")


def _png_bytes(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class TransformersBackend:
    """transformers (PyTorch) on an ``hf`` export: ``batch_size`` images per model call.

    ``batch(jobs)`` takes any number of jobs: it sorts them by prompt length (image tokens + text
    tokens) so that a batch pads little, runs ``batch_size`` at a time with greedy decoding and
    left padding, prepares the next batch's images on CPU threads while the current one decodes,
    and returns the texts in the jobs' order.

    ``kv_cache="static"`` (the default) decodes with :class:`paddle_ocrvl_sft.decoding.StaticDecoder`:
    a static KV cache in bucketed shapes, one CUDA graph per decoding step on GPU, rows that end on
    their own. ``kv_cache="dynamic"`` calls transformers' ``generate`` with its dynamic cache
    (``generate_kwargs`` go to it). ``serve`` uses :meth:`prepare` (one job, on a request's thread)
    and :meth:`run_prepared` (a batch, answers as rows end).
    """

    def __init__(self, model_dir, *, device=None, dtype=None, batch_size: int = 16,
                 max_new_tokens: int | None = None, kv_cache: str = "static", generate_kwargs: dict | None = None,
                 batch_buckets=None, guard: Guard | None = None):
        if kv_cache not in KV_CACHES:
            raise UsageError(f"--kv-cache {kv_cache}: must be one of {', '.join(KV_CACHES)}")
        self.model, self.processor = load_hf(model_dir, device=device or default_torch_device(), dtype=dtype)
        self.bounds = PixelBounds.from_model_dir(model_dir)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        self.kv_cache = kv_cache
        options = dict(generate_kwargs or {})
        self.min_new_tokens = int(options.get("min_new_tokens") or 0)
        # the loop guard (loop_guard.py): the static decoder checks open rows every few steps and stops
        # a looping one; the dynamic path gives it to generate() as a stopping criterion
        self.guard = guard
        self.row_stop = None if guard is None else (lambda ids: guard.loop(ids[-guard.window:]) is not None)
        self.decoder = None
        if kv_cache == "static":
            options.pop("min_new_tokens", None)
            if options:
                raise UsageError(f"--kv-cache static takes no generate options ({', '.join(sorted(options))}); "
                                 "use --kv-cache dynamic for those")
            self.decoder = static_decoder(self.model, self.processor, batch_size if batch_buckets is None else None,
                                          batch_buckets)
        self.generate_kwargs = options
        self.cpu_threads = min(8, os.cpu_count() or 1)
        self._cpu = ThreadPoolExecutor(max_workers=self.cpu_threads, thread_name_prefix="hf-inputs")

    def __call__(self, job: Job) -> str:
        return self.batch([job])[0]

    # --- serve: one job prepared on its request's thread, then batches that answer as rows end ---------

    def prepare(self, job: Job, image=None):
        """A job's model inputs (CPU; thread-safe): a decoding row, or the job itself (dynamic cache)."""
        if self.decoder is None:
            return job
        from paddle_ocrvl_sft.decoding import row_from_inputs

        opened = open_image(job.image) if image is None else image
        try:
            inputs = hf_inputs(self.processor, [opened], [job.prompt], job.pixels)
        finally:
            if image is None and opened is not job.image:
                opened.close()
        return row_from_inputs(self.model, inputs, job.max_new_tokens or self.max_new_tokens)

    def run_prepared(self, items: list, on_done) -> None:
        """Decode prepared items together; ``on_done(i, text)`` as each one ends."""
        if self.decoder is None:
            for i, text in enumerate(self.batch(items)):
                on_done(i, text)
            return
        from paddle_ocrvl_sft.loop_guard import cut_ids

        stops = set(self.decoder.stop_ids.tolist())  # every id a row ends on, not only the tokenizer's eos

        def done(i: int, ids: list[int]) -> None:  # how the row ended (stop, length, repeats), cut by the guard
            kept, finish = cut_ids(ids, self.guard, stops)
            on_done(i, Answer(self.processor.decode(ids[:kept], skip_special_tokens=True), finish))

        self.decoder.run(items, done, min_new_tokens=self.min_new_tokens, row_stop=self.row_stop)

    def warmup(self) -> None:
        """The first model call and the decoding graphs of every batch bucket, before any request."""
        if self.decoder is None:
            return
        from PIL import Image

        row = self.prepare(Job(Image.new("RGB", (448, 448), "white"), DEFAULT_PROMPT, max_new_tokens=2))
        self.decoder.run([row], lambda i, ids: None)
        self.decoder.warmup(row.length)

    # --- predict/eval: many jobs -------------------------------------------------------------------------

    def batch(self, jobs: list[Job]) -> list[str]:
        images: list = []
        try:
            for job in jobs:  # one by one inside the try: when one fails to open, those before it are closed
                images.append(open_image(job.image))
            batches = self._plan(jobs, images)
            texts: list[str] = [""] * len(jobs)
            with ThreadPoolExecutor(max_workers=1) as ahead:
                pending = ahead.submit(self._inputs, jobs, images, batches[0])
                for k, rows in enumerate(batches):
                    inputs = pending.result()
                    if k + 1 < len(batches):
                        pending = ahead.submit(self._inputs, jobs, images, batches[k + 1])
                    if self.decoder is None:
                        caps = [jobs[i].max_new_tokens or self.max_new_tokens for i in rows]
                        answers = hf_decode(self.model, self.processor, inputs, caps, guard=self.guard,
                                            **self.generate_kwargs)
                        for i, text in zip(rows, answers):
                            texts[i] = text
                    else:
                        self.run_prepared(inputs, lambda j, text, rows=rows: texts.__setitem__(rows[j], text))
            return texts
        finally:
            for job, image in zip(jobs, images):
                if image is not job.image:
                    image.close()

    def _inputs(self, jobs: list[Job], images: list, rows: list[int]):
        """One batch's model inputs, made on the CPU threads: decoding rows, or one processor call."""
        if self.decoder is not None:
            return list(self._cpu.map(lambda i: self.prepare(jobs[i], images[i]), rows))
        return hf_inputs(self.processor, [images[i] for i in rows], [jobs[i].prompt for i in rows],
                         jobs[rows[0]].pixels, pool=self._cpu, chunks=self.cpu_threads)

    def _plan(self, jobs: list[Job], images: list) -> list[list[int]]:
        """Job indices in batches: same pixel bounds, at most ``batch_size``, shortest prompts first."""
        # Tokenized with the padding settings hf_inputs uses: the fast tokenizer then never changes
        # its padding state while hf_inputs' threads use it (that raises "Already borrowed").
        text = self.processor.tokenizer([job.prompt for job in jobs], add_special_tokens=False, padding=True,
                                        padding_side="left")["attention_mask"]

        def key(i: int) -> tuple[int, int, int]:
            bounds = jobs[i].pixels or self.bounds
            width, height = images[i].size
            return bounds.min_pixels, bounds.max_pixels, image_tokens(height, width, bounds) + sum(text[i])

        keys = {i: key(i) for i in range(len(jobs))}
        batches: list[list[int]] = []
        for i in sorted(keys, key=keys.get):
            if batches and len(batches[-1]) < self.batch_size and keys[batches[-1][0]][:2] == keys[i][:2]:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches


def static_decoder(model, processor, batch_size: int | None = None, batch_buckets=None):
    """A :class:`~paddle_ocrvl_sft.decoding.StaticDecoder` for this model: its end-of-sequence and
    padding tokens (generation_config.json), its image normalization, and batch buckets up to
    ``batch_size`` (powers of two below it, and ``batch_size`` itself) unless ``batch_buckets``."""
    from paddle_ocrvl_sft.decoding import DEFAULT_BATCH_BUCKETS, StaticDecoder

    config = model.generation_config
    stops = stop_token_ids(model, processor)
    pad = config.pad_token_id if config.pad_token_id is not None else processor.tokenizer.pad_token_id
    if batch_buckets is None:
        batch_buckets = sorted({b for b in DEFAULT_BATCH_BUCKETS if b < batch_size} | {batch_size})
    image_processor = processor.image_processor
    return StaticDecoder(model, pad_token_id=pad, stop_token_ids=stops, pixel_mean=image_processor.image_mean,
                         pixel_std=image_processor.image_std, rescale=image_processor.rescale_factor,
                         batch_buckets=batch_buckets)


def stop_token_ids(model, processor) -> list[int]:
    """The ids a row ends on, as ``generate`` takes them: generation_config.json's ``eos_token_id``
    (one or several), else the tokenizer's."""
    config = model.generation_config
    stops = config.eos_token_id if config.eos_token_id is not None else processor.tokenizer.eos_token_id
    return list(stops) if isinstance(stops, (list, tuple)) else [stops]


def open_image(image):
    """A PIL image for a job's image: files are opened lazily (header only until used)."""
    if not isinstance(image, str):
        return image
    if is_remote(image):
        raise UserError(f"{image}: the transformers backend reads local files only (download it first)")
    from PIL import Image

    return Image.open(image)


KV_CACHES = ("static", "dynamic")
# How many batches predict hands the transformers backend at once: enough for sorting by prompt
# length to group similar images, few enough that results keep streaming out.
SORT_WINDOW_BATCHES = 8


def make_backend(backend: str, *, model_dir=None, server_url=None, server_model=None, model_name=None,
                 device=None, max_new_tokens=None, timeout=600.0, batch_size=16, dtype=None, kv_cache="static",
                 concurrency: int = 16, retries: int = 5, release=None, stop_repeats: int | None = None):
    """A predict backend; ``stop_repeats`` K turns on the loop guard (:mod:`paddle_ocrvl_sft.loop_guard`)."""
    if backend in ("paddle", "transformers") and model_dir is None:
        raise UsageError(f"--backend {backend} needs --model DIR")
    if model_name is not None and release is not None:
        raise UsageError("--model-name and --release: give one (the release names the model)")
    if release is not None and backend != "paddle":
        raise UsageError(f"--release names the PaddleX model of the paddle backend; --backend {backend} has none")
    guard = loop_guard(stop_repeats)
    if backend == "paddle":
        return PaddleBackend(model_dir, model_name=model_name, device=device, max_new_tokens=max_new_tokens,
                             release=release, guard=guard)
    if backend == "transformers":
        return TransformersBackend(model_dir, device=device, dtype=dtype, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, kv_cache=kv_cache, guard=guard)
    if backend == "genai-server":
        if not server_url:
            raise UsageError("--backend genai-server needs --server-url http://HOST:PORT/v1")
        return GenAIServerBackend(server_url, model=server_model, max_new_tokens=max_new_tokens, timeout=timeout,
                                  concurrency=concurrency, retries=retries, guard=guard)
    raise UsageError(f"--backend {backend}: must be one of {', '.join(BACKENDS)}")


def loop_guard(stop_repeats: int | None) -> Guard | None:
    """``--stop-repeats K`` as a guard (None: off), refused below 2."""
    if stop_repeats is None:
        return None
    try:
        return Guard(stop_repeats)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# --- running ------------------------------------------------------------------------------------


def run(jobs: list[Job], backend, *, progress: bool = True, batch_size: int = 1) -> Iterator[dict]:
    """Yield one output record per job, in order, with a progress bar on stderr.

    A backend is called on one :class:`Job` and returns its text; one with ``imap(jobs)`` (the
    genai-server backend: its requests in flight) streams every job's outcome itself; one with a
    ``batch(jobs)`` method gets ``batch_size`` jobs at a time. A job that fails (an unreadable
    image, a server error for that request) does not stop the run: it yields an
    :func:`error_record` and prints one ``error:`` line on stderr. A batch that fails is split in
    halves and retried until the error lands on the job that caused it (a lone job is called directly).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    with tqdm(total=len(jobs), desc="predict", unit="img", file=sys.stderr, disable=not progress) as bar:
        if hasattr(backend, "imap"):
            for job, outcome in zip(jobs, backend.imap(jobs)):
                yield _record(job, outcome, tqdm)
                bar.update(1)
            return
        batched = batch_size > 1 and hasattr(backend, "batch")
        step = batch_size if batched else 1
        for start in range(0, len(jobs), step):
            chunk = jobs[start:start + step]
            for job, outcome in zip(chunk, _outcomes(chunk, backend)):
                yield _record(job, outcome, tqdm)
            bar.update(len(chunk))


def _record(job: Job, outcome, tqdm) -> dict:
    """The output record of a job's text, or its error record (and one ``error:`` line on stderr)."""
    if isinstance(outcome, str):
        return to_record(job, outcome)
    record = error_record(job, outcome)
    where = f"{job.where}: {job.image}" if job.where else job.image
    tqdm.write(f"error: {where}: {record['error']}", file=sys.stderr)
    return record


def default_batch_size(backend_name: str, batch_size: int | None) -> int:
    """Images per model call: ``batch_size`` when given, else 16 for transformers and 1 for the others."""
    return batch_size or (16 if backend_name == "transformers" else 1)


def jobs_per_call(backend_name: str, batch_size: int) -> int:
    """How many jobs :func:`run` hands a backend at once: the transformers backend gets several
    batches per call, so that it sorts them by length and prepares the next batch while one decodes."""
    return batch_size * SORT_WINDOW_BATCHES if backend_name == "transformers" else batch_size


# --- resuming ----------------------------------------------------------------------------------------


def job_key(job: Job) -> tuple:
    """What identifies a job's record in an output file: its dataset line, image and prompt."""
    return job.where, job.image, job.prompt


def load_done(path: Path, wanted: set[tuple], *, other: str) -> dict[tuple, dict]:
    """The finished records of an appended predictions file, by :func:`job_key`.

    Complete lines are kept; a torn last line (an interrupted write) and ``error`` lines (to be
    retried) are dropped and the file is rewritten without them. A line for a job not in
    ``wanted`` means the file belongs to other inputs: a UserError that ends with ``other``.
    """
    if not path.exists():
        return {}
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]  # bytes after the last newline: a torn line, redone
    done, kept = {}, []
    for lineno, line in enumerate(complete.split(b"\n")[:-1], 1):
        try:
            record = json.loads(line)
            key = (record.get("source"), record["image"], record["prompt"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path}:{lineno}: not a predict output line; delete it or rerun with --force") from None
        if key not in wanted:
            raise UserError(f"{path}:{lineno}: a prediction for {key[0] or key[1]} that the data does not have; {other}")
        if "error" in record:
            continue
        done[key] = record
        kept.append(line.decode("utf-8") + "\n")
    if len(kept) != complete.count(b"\n") or len(complete) != len(raw):
        from paddle_ocrvl_sft.io import atomic_write_text

        atomic_write_text(path, "".join(kept))
    return done


def run_resumable(jobs: list[Job], path: Path, make_backend_fn, *, batch_size: int = 1, progress: bool = True,
                  other: str = "use another output or --force") -> list[dict]:
    """Each job's record, in job order: from ``path`` (an appended JSONL of earlier runs) or made now.

    New records are appended to ``path`` and flushed one by one, so an interrupted run keeps what it
    finished and the next run asks the model only for the rest (failed ones included). The backend
    is made (the model loaded, the server asked) only when something is left to do.
    """
    done = load_done(path, {job_key(j) for j in jobs}, other=other)
    todo = [j for j in jobs if job_key(j) not in done]
    if todo:
        if done:
            print(f"resuming {path}: {len(jobs) - len(todo)} of {len(jobs)} predictions already made",
                  file=sys.stderr)
        backend = make_backend_fn()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            for job, record in zip(todo, run(todo, backend, progress=progress, batch_size=batch_size)):
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
                done[job_key(job)] = record
    return [done[job_key(j)] for j in jobs]


def _outcomes(jobs: list[Job], backend) -> list:
    """Each job's text or the exception it raised: a failed batch is retried in halves."""
    if len(jobs) == 1:
        try:
            return [backend(jobs[0])]
        except Exception as exc:  # one bad input must not lose the predictions already made
            return [exc]
    try:
        return list(backend.batch(jobs))
    except Exception:
        half = len(jobs) // 2
        return _outcomes(jobs[:half], backend) + _outcomes(jobs[half:], backend)


def error_record(job: Job, exc: Exception) -> dict:
    """The output line of a failed job: image, prompt and why (one line, no traceback)."""
    from PIL import UnidentifiedImageError  # both backends open images with PIL

    if isinstance(exc, UnidentifiedImageError):
        why = "not an image file PIL can read"
    elif isinstance(exc, UserError):
        why = str(exc)
    else:
        why = f"{type(exc).__name__}: {exc}"
    record = {"image": job.image, "prompt": job.prompt, "error": " ".join(why.split())}  # one line
    if job.where:
        record["source"] = job.where
    return record


def write_records(records: Iterable[dict], out: str | os.PathLike | None, *,
                  force: bool = False) -> tuple[int, int]:
    """JSONL to ``out`` (atomically; refused if it exists without ``force``) or to stdout.

    Returns (records written, how many of them are error records).
    """
    written = failed = 0
    with (contextlib.nullcontext() if out is None else atomic_open(out, "w", force=force)) as fh:
        for record in records:
            line = json.dumps(record, ensure_ascii=False)
            if fh is None:
                print(line, flush=True)
            else:
                fh.write(line + "\n")
            written += 1
            failed += "error" in record
    return written, failed


# --- transformers (PyTorch) ---------------------------------------------------------------------

DTYPES = ("bfloat16", "float16", "float32")


def default_torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_hf(model_dir: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None):
    """transformers model + processor, with the PIL image processor (no torchvision needed).

    ``device``: ``cpu``, ``cuda``, ``cuda:N`` (PaddlePaddle's ``gpu``/``gpu:N`` are accepted);
    ``dtype``: bfloat16 on GPU and float32 on CPU unless given.
    """
    import torch
    from transformers import PaddleOCRVLForConditionalGeneration

    model_dir = str(model_dir)
    check_hf_dir(model_dir)
    device = device.replace("gpu", "cuda", 1) if device.startswith("gpu") else device
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: must be one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype) if dtype else torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model = PaddleOCRVLForConditionalGeneration.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    except (RuntimeError, AssertionError) as exc:  # bad device name, no CUDA build, out of memory
        raise UserError(f"--model {model_dir}: cannot load it on {device}: {exc}") from None
    return model, hf_processor(model_dir)


def hf_processor(model_dir: str | os.PathLike):
    """transformers' PaddleOCR-VL processor of an hf bundle, with the PIL image processor (no torchvision)."""
    from transformers import AutoTokenizer, PaddleOCRVLProcessor
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import (
        PaddleOCRVLImageProcessorPil,
    )

    model_dir = str(model_dir)
    return PaddleOCRVLProcessor(
        image_processor=PaddleOCRVLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        chat_template=(Path(model_dir) / "chat_template.jinja").read_text(encoding="utf-8"),
    )


def check_hf_dir(model_dir: str | os.PathLike) -> None:
    """An ``export --format hf`` bundle: untied ``lm_head`` and a tokenizer that names its image token.

    A PaddleX bundle or the released flat config would load with ``lm_head`` silently tied to
    the embeddings (export.py says why), so it is refused rather than run wrong.
    """
    model_dir = Path(model_dir)
    hint = f"--model {model_dir}: not an hf bundle ({{}}): run `python -m paddle_ocrvl_sft export RUN_DIR --base BASE --format hf`"
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: not a directory")
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(hint.format(f"config.json/tokenizer_config.json: {exc}")) from None
    if (config.get("text_config") or {}).get("tie_word_embeddings") is not False:
        raise UserError(hint.format("config.json has no text_config with tie_word_embeddings false"))
    if not (tokenizer.get("extra_special_tokens") or {}).get("image_token"):
        raise UserError(hint.format("tokenizer_config.json names no image_token"))


def hf_inputs(processor, images: list, queries: list[str], pixels: PixelBounds | None = None, *,
              pool=None, chunks: int = 1):
    """Processor inputs for one batch: the training prompt layout, left padding for generation.

    Pixel values stay unscaled (0..255): :func:`hf_decode` rescales and normalizes them on the
    model's device, which halves the CPU work. With a thread ``pool`` the batch is prepared in
    ``chunks`` side by side (the image processor's array work releases the GIL) and joined.
    """
    chunks = min(len(images), chunks) if pool is not None else 1
    if chunks > 1:
        bounds = [round(len(images) * k / chunks) for k in range(chunks + 1)]
        parts = list(pool.map(lambda k: hf_inputs(processor, images[bounds[k]:bounds[k + 1]],
                                                   queries[bounds[k]:bounds[k + 1]], pixels),
                              range(chunks)))
        return _join_inputs(parts, processor.tokenizer.pad_token_id)
    prompts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
        add_generation_prompt=True, image_token=IMAGE_PROMPT) for q in queries]
    size = {} if pixels is None else {"size": {"shortest_edge": pixels.min_pixels, "longest_edge": pixels.max_pixels}}
    return processor(images=[im.convert("RGB") for im in images], text=prompts, return_tensors="pt",
                     padding=True, padding_side="left", do_rescale=False, do_normalize=False, **size)


def _join_inputs(parts: list, pad_id: int):
    """Processor outputs of consecutive chunks as one batch: token rows left-padded to one width."""
    import torch
    from transformers import BatchFeature

    width = max(part["input_ids"].shape[1] for part in parts)
    joined = {}
    for key in parts[0]:
        if key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            fill = pad_id if key == "input_ids" else 0
            joined[key] = torch.cat([torch.nn.functional.pad(part[key], (width - part[key].shape[1], 0), value=fill)
                                     for part in parts])
        else:  # pixel_values (patches of all images), image_grid_thw (one row per image)
            joined[key] = torch.cat([part[key] for part in parts])
    return BatchFeature(joined)


def hf_decode(model, processor, inputs, caps: list[int], guard: Guard | None = None, **generate_kwargs) -> list[str]:
    """Greedy decoding with the KV cache; row i keeps at most ``caps[i]`` new tokens.

    ``use_cache`` is passed explicitly: the released generation_config.json says false, which
    makes ``generate`` recompute the whole sequence (vision tower included) for every token.
    Each answer says how it ended (:class:`~paddle_ocrvl_sft.loop_guard.Answer`); with a ``guard``
    a row that loops is stopped during generation and cut after the loop's first copy.
    """
    import torch

    from paddle_ocrvl_sft.loop_guard import cut_ids, transformers_stopping_criteria

    image_processor = processor.image_processor
    inputs = inputs.to(model.device)
    mean = torch.tensor(image_processor.image_mean, device=model.device).view(1, -1, 1, 1)
    std = torch.tensor(image_processor.image_std, device=model.device).view(1, -1, 1, 1)
    pixels = inputs["pixel_values"].float() * image_processor.rescale_factor  # what hf_inputs left undone
    inputs["pixel_values"] = ((pixels - mean) / std).to(model.dtype)
    if guard is not None:
        from transformers import StoppingCriteriaList

        generate_kwargs["stopping_criteria"] = StoppingCriteriaList(
            [transformers_stopping_criteria(guard, inputs["input_ids"].shape[1])])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max(caps), do_sample=False, use_cache=True, **generate_kwargs)
    new = out[:, inputs["input_ids"].shape[1]:].cpu()
    stops = stop_token_ids(model, processor)  # generate() ends rows on all of them, not only the tokenizer's eos
    answers = []
    for row, cap in zip(new, caps):
        # without a guard, kept is the first stop (or the cap): what follows it is special tokens
        # (the stop, padding) that decoding skips anyway
        kept, finish = cut_ids(row[:cap].tolist(), guard, stops)
        answers.append(Answer(processor.decode(row[:kept], skip_special_tokens=True), finish))
    return answers


def hf_generate(model, processor, image, query: str, max_new_tokens: int) -> str:
    """One image, one query: the answer text."""
    return hf_decode(model, processor, hf_inputs(processor, [image], [query]), [max_new_tokens])[0]
