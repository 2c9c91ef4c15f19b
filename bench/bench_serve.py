"""Benchmark: batched transformers predict and ``serve`` on one GPU, against seed 001's generate loop.

    python bench/bench_serve.py --out results.json            # on a GPU machine (writes as it goes)
    python bench/bench_serve.py --tiny --out tiny.json        # CPU smoke run with the tiny test model

The model is the real PaddleOCR-VL-0.9B architecture (config.json of the released files, copied in
paddle_ocrvl_sft/resources/paddleocr_vl_0.9b from shared/reference/PaddleOCR-VL-0.9B-files) with
RANDOM bf16 weights and testing.py's small SentencePiece tokenizer (real token ids), made into an
``hf`` bundle by ``export --format hf``. Random weights say nothing useful, so every answer is forced
to NEW_TOKENS new tokens (min_new_tokens = max_new_tokens): each page costs the same decoding work.
New tokens are counted from what ``generate`` returned, not assumed. Pages: synthetic 1344x448 text
images (768 image tokens each), read from PNG files, so "end to end" includes decoding the file,
the image processor and the detokenizer.

Contenders (one process, one GPU, measured side by side):
- ``loop``: seed 001's inference, one image at a time: processor.apply_chat_template(tokenize=True)
  then model.generate, with the KV cache on; ``loop_as_released`` is the same loop with the
  released generation_config.json (use_cache false), as the seed's code runs it.
- ``predict bs=N``: TransformersBackend.batch (what ``predict --backend transformers`` and ``serve``
  call): sorted by prompt length, N pages per generate call, next batch prepared on a CPU thread;
  dynamic or static KV cache.
- ``serve``: the FastAPI app on 127.0.0.1 with that backend: 64 concurrent clients vs sequential
  requests (JSON + base64 PNG to /ocr).
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGE_SIZE = (1344, 448)


def build_model(root: Path, tiny: bool, device: str) -> Path:
    """An hf bundle: the tiny test model, or the 0.9B architecture with random bf16 weights."""
    from paddle_ocrvl_sft.export import export
    from paddle_ocrvl_sft.testing import (
        BASE_FILES,
        RESOURCES,
        build_tiny_model,
        tokenizer_model_bytes,
        weight_shapes,
    )

    base, hf = root / "base", root / "hf"
    if hf.exists():
        return hf
    if tiny:
        build_tiny_model(base, "base")
    else:
        import torch
        from safetensors.torch import save_file

        base.mkdir(parents=True)
        for name in (*BASE_FILES, "config.json"):
            shutil.copyfile(RESOURCES / name, base / name)
        (base / "tokenizer.model").write_bytes(tokenizer_model_bytes())
        cfg = json.loads((RESOURCES / "config.json").read_text())
        generator = torch.Generator(device=device).manual_seed(0)
        tensors = {}
        for name, shape in weight_shapes(cfg).items():
            if name.endswith("bias"):
                t = torch.zeros(shape, device=device)
            elif name.endswith(("norm.weight", "layer_norm1.weight", "layer_norm2.weight")):
                t = torch.ones(shape, device=device)
            else:
                t = torch.randn(shape, device=device, generator=generator) * 0.02
            tensors[name] = t.to(torch.bfloat16).cpu()
        save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    export(base, base, hf, fmt="hf", verify=False)
    return hf


def make_pages(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 1344x448 pages of text lines, as PNG files."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"page{i:04d}.png"
        if not path.exists():
            image = Image.new("RGB", PAGE_SIZE, "white")
            draw = ImageDraw.Draw(image)
            for row, y in enumerate(range(10, PAGE_SIZE[1] - 16, 18)):
                draw.text((12, y), f"{i:04d}-{row:02d} ITEM {row * 7 % 97:02d} QTY {row % 5 + 1} PRICE {row * 1.25 + i:8.2f} "
                                   f"TOTAL {row * 2.5 + i:9.2f} DATE 2024-{row % 12 + 1:02d}-{i % 28 + 1:02d}", fill="black")
            image.save(path)
        paths.append(path)
    return paths


class TokenCounter:
    """Wraps ``model.generate``: counts the new tokens it really returned (rows x new columns)."""

    def __init__(self, model):
        self.model, self.original, self.tokens = model, model.generate, 0
        model.generate = self

    def __call__(self, *args, **kwargs):
        out = self.original(*args, **kwargs)
        prompt = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        self.tokens += out.shape[0] * (out.shape[1] - prompt)
        return out


def timed(fn, counter: TokenCounter, pages: int, sync) -> dict:
    counter.tokens = 0
    sync()
    start = time.perf_counter()
    fn()
    sync()
    seconds = time.perf_counter() - start
    return {"pages": pages, "seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 3),
            "new_tokens": counter.tokens, "new_tokens_per_s": round(counter.tokens / seconds, 1)}


def seed_loop(model, processor, paths, new_tokens: int, use_cache: bool | None):
    """Seed 001: one image at a time, processor.apply_chat_template(tokenize=True), generate, decode."""
    import torch
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            messages = [{"role": "user", "content": [{"type": "image", "image": image.convert("RGB")},
                                                     {"type": "text", "text": "OCR:"}]}]
            inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        kwargs = {} if use_cache is None else {"use_cache": use_cache}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        processor.decode(out[0][inputs["input_ids"].shape[-1]:], skip_special_tokens=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_serve"))
    parser.add_argument("--tiny", action="store_true", help="the tiny test model on CPU (a smoke run)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=480, help="start no measurement after this many seconds")
    parser.add_argument("--only", help="comma-separated measurement names (default: all)")
    args = parser.parse_args()

    import torch

    from paddle_ocrvl_sft.predict import Job, TransformersBackend

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    results = {"conditions": {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "python": platform.python_version(), "model": "tiny test model" if args.tiny else
        "PaddleOCR-VL-0.9B architecture, RANDOM bf16 weights", "page": f"{PAGE_SIZE[0]}x{PAGE_SIZE[1]} PNG",
        "new_tokens_per_page": args.new_tokens, "prompt": "OCR:"}, "runs": {}, "skipped": {}}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))

    hf = build_model(args.work / ("tiny" if args.tiny else "full"), args.tiny, device)
    results["conditions"]["build_s"] = round(time.perf_counter() - t0, 1)
    pages = make_pages(args.work / "pages", 512)
    n = args.new_tokens
    forced = {"min_new_tokens": n}

    backends: dict[str, TransformersBackend] = {}

    def backend(kv_cache: str, batch_size: int) -> TransformersBackend:
        if kv_cache not in backends:  # one model per cache kind; the batch size is a plain attribute
            backends[kv_cache] = TransformersBackend(hf, device=device, max_new_tokens=n, kv_cache=kv_cache,
                                                     generate_kwargs=forced)
            TokenCounter(backends[kv_cache].model)
            if kv_cache == "dynamic":  # CUDA context and kernels, once
                backends[kv_cache].batch([Job(str(pages[0]), "OCR:")])
        backends[kv_cache].batch_size = batch_size
        return backends[kv_cache]

    def predict(kv_cache: str, batch_size: int, count: int):
        b = backend(kv_cache, batch_size)
        jobs = [Job(str(p), "OCR:") for p in pages[:count]]
        run = {}
        if kv_cache == "static":  # the first call of a batch shape compiles the decoding step
            run["first_call_s"] = timed(lambda: b.batch(jobs[:batch_size]), b.model.generate, 1, sync)["seconds"]
        run.update(timed(lambda: b.batch(jobs), b.model.generate, count, sync))
        run.update(batch_size=batch_size, kv_cache=kv_cache)
        return run

    def preprocess(count: int):
        """The CPU share: PNG decode + image processor + tokenizer for one batch, no GPU."""
        from PIL import Image

        from paddle_ocrvl_sft.predict import hf_inputs

        b = backend("dynamic", count)
        out = {"pages": count, "threads": b.cpu_threads}
        for label, kwargs in (("one_thread", {}), ("threads", {"pool": b._cpu, "chunks": b.cpu_threads})):
            start = time.perf_counter()
            inputs = hf_inputs(b.processor, [Image.open(p) for p in pages[:count]], ["OCR:"] * count, **kwargs)
            out[f"ms_per_page_{label}"] = round((time.perf_counter() - start) / count * 1000, 1)
        out["prompt_tokens_per_page"] = int(inputs["input_ids"].shape[1])
        return out

    def loop(use_cache, count):
        b = backend("dynamic", 1)
        seed_loop(b.model, b.processor, pages[:1], 4, use_cache)  # warm-up
        run = timed(lambda: seed_loop(b.model, b.processor, pages[:count], n, use_cache), b.model.generate, count, sync)
        run.update(use_cache="from generation_config.json (false)" if use_cache is None else use_cache)
        return run

    def serve(concurrent: int, sequential: int):
        import urllib.request

        from paddle_ocrvl_sft.serve.app import ServerThread, create_app
        from paddle_ocrvl_sft.serve.inputs import Limits

        b = backend("dynamic", concurrent)
        app = create_app(b, model_name="bench", backend_name="transformers",
                         limits=Limits(max_batch=concurrent, max_concurrency=concurrent, max_new_tokens=n, timeout=600))
        bodies = [json.dumps({"image": base64.b64encode(p.read_bytes()).decode()}).encode() for p in pages[:concurrent]]

        def post(url, body):
            req = urllib.request.Request(url + "/ocr", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as resp:
                return json.loads(resp.read())["text"]

        out = {}
        with ServerThread(app) as server:
            post(server.url, bodies[0])  # warm-up
            with ThreadPoolExecutor(concurrent) as pool:
                out["concurrent"] = timed(lambda: list(pool.map(lambda body: post(server.url, body), bodies)),
                                          b.model.generate, concurrent, sync)
            out["sequential"] = timed(lambda: [post(server.url, body) for body in bodies[:sequential]],
                                      b.model.generate, sequential, sync)
            with urllib.request.urlopen(server.url + "/metrics", timeout=60) as resp:
                metrics = resp.read().decode()
        out["concurrent"]["clients"] = concurrent
        out["model_calls"] = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                              if line.startswith(("ocrvl_batch_size_count", "ocrvl_batch_size_sum"))}
        return out

    def pages_for(count: int) -> int:
        return max(1, count // 16) if args.tiny else count  # the smoke run: few pages

    plan = [  # most important first: the budget may stop the tail
        ("loop", lambda: loop(True, pages_for(4))),
        ("predict_bs1_dynamic", lambda: predict("dynamic", 1, pages_for(4))),
        ("predict_bs16_dynamic", lambda: predict("dynamic", 16, pages_for(32))),
        ("predict_bs64_dynamic", lambda: predict("dynamic", 64, pages_for(128))),
        ("predict_bs64_static", lambda: predict("static", 64, pages_for(128))),
        ("predict_bs128_static", lambda: predict("static", 128, pages_for(512))),
        ("serve_64_clients", lambda: serve(pages_for(64), pages_for(4))),
        ("preprocess_64", lambda: preprocess(pages_for(64))),
        ("predict_bs256_static", lambda: predict("static", 256, pages_for(512))),
        ("predict_bs256_dynamic", lambda: predict("dynamic", 256, pages_for(256))),
        ("loop_as_released", lambda: loop(None, 1)),
    ]
    only = set(args.only.split(",")) if args.only else None
    for name, measure in plan:
        if only and name not in only:
            continue
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            results["skipped"][name] = f"time budget: {elapsed:.0f} s used of --budget-s {args.budget_s:g}"
            save()
            continue
        print(f"[{elapsed:6.1f}s] {name} ...", flush=True)
        try:
            results["runs"][name] = measure()
        except Exception as exc:  # record and go on: one failing configuration must not lose the rest
            results["skipped"][name] = f"{type(exc).__name__}: {str(exc)[:500]}"
            if device == "cuda":
                torch.cuda.empty_cache()
        print(f"          {json.dumps(results['runs'].get(name) or results['skipped'][name])}", flush=True)
        save()
    results["conditions"]["total_s"] = round(time.perf_counter() - t0, 1)
    if device == "cuda":
        results["conditions"]["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
