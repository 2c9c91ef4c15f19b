"""Run a (fine-tuned) PaddleOCR-VL on images with any prompt; KIE answers come back parsed.

Two backends:

* ``paddle``: PaddleX's VL-rec predictor called directly,
  ``create_predictor("PaddleOCR-VL-0.9B", model_dir=...).predict([{"image": ..., "query": ...}])``.
  The query reaches the chat template unchanged, so custom KIE prompts need no patch (the
  ``doc_parser`` pipeline is what rewrites them; shared/reference/FACTS.md, PaddleX inference).
* ``genai-server``: an OpenAI-compatible ``chat.completions`` server (``paddleocr genai_server``,
  vLLM, ...) with the image as a data URL followed by the text query, as PaddleX's own client does.

KIE prompts are rendered by :mod:`paddle_ocrvl_sft.prompts`, the same code that writes training
data, so training and inference prompts match byte for byte.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from paddle_ocrvl_sft.bundle import check_model_dir, model_name_of
from paddle_ocrvl_sft.data.sample import image_location, image_urls, is_remote, sample_turns
from paddle_ocrvl_sft.data.validate import DATASET_SUFFIXES
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.io import atomic_open, iter_records
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS, kie_prompt, prompt_kind, query_for_fields

BACKENDS = ("paddle", "genai-server")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_PROMPT = BUILTIN_PROMPTS["ocr"]


@dataclass(frozen=True)
class Job:
    """One image and the prompt to ask about it; ``where``/``reference`` come from a dataset line."""

    image: str
    prompt: str
    where: str | None = None
    reference: str | None = None


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
    """The output line: image, prompt, raw text, and for KIE prompts the parsed ``fields``."""
    record = {"image": job.image, "prompt": job.prompt, "text": text}
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
    def __init__(self, model_dir, *, model_name=None, device=None, max_new_tokens=None):
        check_model_dir(model_dir)
        self.predictor = paddle_predictor(model_dir, model_name, device)
        self.kwargs = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}

    def __call__(self, job: Job) -> str:
        return self.batch([job])[0]

    def batch(self, jobs: list[Job]) -> list[str]:
        """PaddleX's predictor takes a list of inputs and batches them itself."""
        results = list(self.predictor.predict([{"image": j.image, "query": j.prompt} for j in jobs], **self.kwargs))
        return [r["result"] for r in results]


class GenAIServerBackend:
    """OpenAI ``chat.completions`` over HTTP with the stdlib (timeout on every request)."""

    def __init__(self, server_url: str, *, model: str | None = None, max_new_tokens: int | None = None,
                 timeout: float = 600.0):
        self.base = server_url.rstrip("/")
        self.timeout = timeout
        self.max_new_tokens = max_new_tokens
        self.model = model or self._first_model()

    def _request(self, path: str, body: dict | None = None) -> dict:
        url = self.base + path
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise UserError(f"--server-url {url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise UserError(f"--server-url {url}: {getattr(exc, 'reason', exc)}") from None
        except ValueError as exc:
            raise UserError(f"--server-url {url}: answer is not JSON ({exc})") from None

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
        if self.max_new_tokens is not None:
            body["max_completion_tokens"] = self.max_new_tokens
        answer = self._request("/chat/completions", body)
        try:
            return answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"--server-url {self.base}/chat/completions: unexpected answer {str(answer)[:200]}") from None


def image_url(image: str) -> str:
    """Remote URLs as they are; local files as a ``data:`` URL (PNG/JPEG bytes unchanged, else PNG)."""
    if is_remote(image):
        return image
    from PIL import Image

    raw = Path(image).read_bytes()
    with Image.open(image) as img:
        fmt = img.format
        if fmt not in ("PNG", "JPEG"):
            import io

            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
            raw, fmt = buf.getvalue(), "PNG"
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode("ascii")


def make_backend(backend: str, *, model_dir=None, server_url=None, server_model=None, model_name=None,
                 device=None, max_new_tokens=None, timeout=600.0):
    if backend == "paddle":
        if model_dir is None:
            raise UsageError("--backend paddle needs --model DIR")
        return PaddleBackend(model_dir, model_name=model_name, device=device, max_new_tokens=max_new_tokens)
    if backend == "genai-server":
        if not server_url:
            raise UsageError("--backend genai-server needs --server-url http://HOST:PORT/v1")
        return GenAIServerBackend(server_url, model=server_model, max_new_tokens=max_new_tokens, timeout=timeout)
    raise UsageError(f"--backend {backend}: must be one of {', '.join(BACKENDS)}")


# --- running ------------------------------------------------------------------------------------


def run(jobs: list[Job], backend, *, progress: bool = True, batch_size: int = 1) -> Iterator[dict]:
    """Yield one output record per job, in order, with a progress bar on stderr.

    A backend is called on one :class:`Job` and returns its text; one with a ``batch(jobs)`` method
    gets ``batch_size`` jobs at a time. A job that fails (an unreadable image, a server error for
    that request) does not stop the run: it yields an :func:`error_record` and prints one ``error:``
    line on stderr. When a whole batch fails, its jobs are retried one by one so the error lands
    on the job that caused it.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    batched = batch_size > 1 and hasattr(backend, "batch")
    with tqdm(total=len(jobs), desc="predict", unit="img", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(jobs), batch_size if batched else 1):
            chunk = jobs[start:start + (batch_size if batched else 1)]
            texts = None
            if batched:
                try:
                    texts = list(backend.batch(chunk))
                except Exception:  # noqa: BLE001 - retried one by one below, which names the culprit
                    texts = None
            for i, job in enumerate(chunk):
                if texts is not None:
                    yield to_record(job, texts[i])
                    continue
                try:
                    text = backend(job)
                except Exception as exc:  # one bad input must not lose the predictions already made
                    record = error_record(job, exc)
                    where = f"{job.where}: {job.image}" if job.where else job.image
                    tqdm.write(f"error: {where}: {record['error']}", file=sys.stderr)
                    yield record
                else:
                    yield to_record(job, text)
            bar.update(len(chunk))


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


def load_hf(model_dir: str | os.PathLike):
    """transformers model + processor on CPU, with the PIL image processor (no torchvision needed)."""
    import torch
    from transformers import (
        AutoTokenizer,
        PaddleOCRVLForConditionalGeneration,
        PaddleOCRVLProcessor,
    )
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import (
        PaddleOCRVLImageProcessorPil,
    )

    model_dir = str(model_dir)
    model = PaddleOCRVLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = PaddleOCRVLProcessor(
        image_processor=PaddleOCRVLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        chat_template=(Path(model_dir) / "chat_template.jinja").read_text(encoding="utf-8"),
    )
    return model, processor


def hf_generate(model, processor, image, query: str, max_new_tokens: int) -> str:
    import torch

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
