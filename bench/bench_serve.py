"""Benchmark: transformers predict, eval and ``serve`` under load on one GPU, against seed 001's loop.

    python bench/bench_serve.py --out results.json            # on a GPU machine (writes as it goes)
    python bench/bench_serve.py --tiny --out tiny.json        # CPU smoke run with the tiny test model

The model is the real PaddleOCR-VL-0.9B architecture (config.json of the released files, copied in
paddle_ocrvl_sft/resources/paddleocr_vl_0.9b from shared/reference/PaddleOCR-VL-0.9B-files) with
RANDOM bf16 weights and testing.py's small SentencePiece tokenizer (real token ids), made into an
``hf`` bundle by ``export --format hf``. Random weights say nothing useful, so every answer is forced
to NEW_TOKENS new tokens (min_new_tokens = max_new_tokens): each page costs the same decoding work.
New tokens are counted from what the decoder returned (``generate``'s output for the loop and the
dynamic cache; the static decoder's answers otherwise), not assumed. Pages: synthetic 1344x448 text
images (768 image tokens each), read from PNG files, so "end to end" includes decoding the file,
the image processor and the detokenizer.

Contenders (one process and one GPU, measured side by side; serve's clients in a second process):
- ``loop``: seed 001's inference, one image at a time: processor.apply_chat_template(tokenize=True)
  then model.generate, with the KV cache on.
- ``predict bs=N``: TransformersBackend.batch (what ``predict --backend transformers`` runs): sorted
  by prompt length, N pages per model call, the next batch prepared on CPU threads while one
  decodes; the static decoder (default) or ``generate`` with the dynamic cache.
- ``eval``: ``evaluate()`` over an ERNIEKit dataset of the same pages (predictions appended as they
  come, scored, report written) with the same backend and batch size.
- ``serve``: the FastAPI app on 127.0.0.1 with that backend; C clients (threads of another process)
  each send R requests one after another (JSON + base64 PNG to /ocr); and single requests one at a
  time (latency).
- ``genai-server client``: ``predict --backend genai-server --concurrency C`` against that server.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import shutil
import subprocess
import sys
import time
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


def make_dataset(path: Path, pages: list[Path]) -> Path:
    """An ERNIEKit JSONL over ``pages``: prompt ``OCR:``, a made-up reference answer per page."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, page in enumerate(pages):
            fh.write(json.dumps({"image_info": [{"matched_text_index": 0, "image_url": str(page)}],
                                 "text_info": [{"text": "OCR:", "tag": "mask"},
                                               {"text": f"{i:04d} ITEM QTY PRICE TOTAL DATE", "tag": "no_mask"}]}) + "\n")
    return path


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


def new_tokens(backend) -> int:
    """New tokens made so far by a backend: its static decoder's count, or generate's (TokenCounter)."""
    if backend.decoder is not None:
        return backend.decoder.stats["new_tokens"]
    return backend.model.generate.tokens


def timed(fn, backend, pages: int, sync) -> dict:
    before = new_tokens(backend)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    seconds = time.perf_counter() - start
    tokens = new_tokens(backend) - before
    return {"pages": pages, "seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 3),
            "new_tokens": tokens, "new_tokens_per_s": round(tokens / seconds, 1)}


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


# --- serve's clients: another process, so that they do not share the server's interpreter lock ----------


def clients(url: str, pages: list[str], count: int, rounds: int) -> dict:
    """``count`` client threads, each sending ``rounds`` requests one after another; timings."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    bodies = [json.dumps({"image": base64.b64encode(Path(p).read_bytes()).decode()}).encode() for p in pages]

    def post(body: bytes) -> float:
        start = time.perf_counter()
        request = urllib.request.Request(url + "/ocr", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as resp:
            json.loads(resp.read())["text"]
        return time.perf_counter() - start

    def client(k: int) -> list[float]:
        return [post(bodies[(k * rounds + r) % len(bodies)]) for r in range(rounds)]

    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        latencies = [t for ts in pool.map(client, range(count)) for t in ts]
    seconds = time.perf_counter() - start
    latencies.sort()
    return {"seconds": seconds, "requests": len(latencies), "latency_p50_s": round(latencies[len(latencies) // 2], 3),
            "latency_max_s": round(latencies[-1], 3)}


def run_clients(url: str, pages: list[Path], count: int, rounds: int) -> dict:
    cmd = [sys.executable, __file__, "--clients", json.dumps({"url": url, "pages": [str(p) for p in pages],
                                                               "count": count, "rounds": rounds}), "--out", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"clients failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_serve"))
    parser.add_argument("--tiny", action="store_true", help="the tiny test model on CPU (a smoke run)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=480, help="start no measurement after this many seconds")
    parser.add_argument("--only", help="comma-separated measurement names (default: all)")
    parser.add_argument("--clients", help=argparse.SUPPRESS)  # internal: run as serve's client process
    args = parser.parse_args()
    if args.clients:
        spec = json.loads(args.clients)
        print(json.dumps(clients(spec["url"], spec["pages"], spec["count"], spec["rounds"])))
        return 0

    import torch

    from paddle_ocrvl_sft.decoding import DEFAULT_BATCH_BUCKETS
    from paddle_ocrvl_sft.predict import Job, TransformersBackend

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    results = {"conditions": {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
        "model": "tiny test model" if args.tiny else "PaddleOCR-VL-0.9B architecture, RANDOM bf16 weights",
        "page": f"{PAGE_SIZE[0]}x{PAGE_SIZE[1]} PNG", "new_tokens_per_page": args.new_tokens, "prompt": "OCR:"},
        "runs": {}, "skipped": {}}

    def save():
        if str(args.out) != "-":
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))

    hf = build_model(args.work / ("tiny" if args.tiny else "full"), args.tiny, device)
    results["conditions"]["build_s"] = round(time.perf_counter() - t0, 1)
    scale = 16 if args.tiny else 1  # the smoke run: few pages
    pages = make_pages(args.work / "pages", max(64, 1024 // scale))
    n = args.new_tokens
    forced = {"min_new_tokens": n}

    backends: dict[str, TransformersBackend] = {}

    def backend(kv_cache: str, batch_size: int) -> TransformersBackend:
        if kv_cache not in backends:  # one model per cache kind; the batch size is a plain attribute
            start = time.perf_counter()
            b = backends[kv_cache] = TransformersBackend(hf, device=device, max_new_tokens=n, kv_cache=kv_cache,
                                                         generate_kwargs=forced, batch_buckets=DEFAULT_BATCH_BUCKETS)
            if kv_cache == "dynamic":
                TokenCounter(b.model)
                b.batch([Job(str(pages[0]), "OCR:", max_new_tokens=2)])  # CUDA context and kernels, once
            else:
                b.warmup()  # what serve does at start-up: every batch bucket's decoding graph
            sync()
            results["conditions"][f"load_and_warmup_{kv_cache}_s"] = round(time.perf_counter() - start, 2)
        backends[kv_cache].batch_size = batch_size
        return backends[kv_cache]

    def predict(kv_cache: str, batch_size: int, count: int):
        b = backend(kv_cache, batch_size)
        jobs = [Job(str(p), "OCR:") for p in pages[:count]]
        run = timed(lambda: b.batch(jobs), b, count, sync)
        run.update(batch_size=batch_size, kv_cache=kv_cache)
        if b.decoder is not None:
            run["decoder"] = {k: v for k, v in b.decoder.stats.items() if k != "new_tokens"}
        return run

    def evaluate_pages(batch_size: int, count: int):
        """evaluate() on the same backend (forced answers): predictions, scores, report."""
        from paddle_ocrvl_sft.evaluate import runner

        b = backend("static", batch_size)
        data = make_dataset(args.work / f"val{count}.jsonl", pages[:count])
        out = args.work / f"eval{count}"
        shutil.rmtree(out, ignore_errors=True)
        made = runner.make_backend
        runner.make_backend = lambda name, **options: b  # the forced-answer backend, batch size as given
        try:
            run = timed(lambda: runner.evaluate(hf, data, out_dir=out, backend="transformers",
                                                batch_size=batch_size, progress=False), b, count, sync)
        finally:
            runner.make_backend = made
        run.update(batch_size=batch_size, metrics=json.loads((out / "metrics.json").read_text())["ocr"]["n"])
        return run

    def loop(count):
        b = backend("dynamic", 1)
        seed_loop(b.model, b.processor, pages[:1], 4, True)  # warm-up
        run = timed(lambda: seed_loop(b.model, b.processor, pages[:count], n, True), b, count, sync)
        run["seconds_per_page"] = round(run["seconds"] / count, 3)
        return run

    def serve(concurrent: int, rounds: int, single: int):
        import urllib.request

        from paddle_ocrvl_sft.serve.app import ServerThread, create_app
        from paddle_ocrvl_sft.serve.inputs import Limits

        b = backend("static", concurrent)
        app = create_app(b, model_name="bench", backend_name="transformers",
                         limits=Limits(max_batch=concurrent, max_concurrency=max(256, concurrent), max_new_tokens=n,
                                       timeout=600))
        out = {"clients": concurrent, "rounds": rounds}
        with ServerThread(app) as server:
            before, batches = new_tokens(b), b.decoder.stats["batches"]
            sync()
            measured = run_clients(server.url, pages, concurrent, rounds)
            sync()
            tokens = new_tokens(b) - before
            out["concurrent"] = {"pages": measured["requests"], "seconds": round(measured["seconds"], 3),
                                 "pages_per_s": round(measured["requests"] / measured["seconds"], 3),
                                 "new_tokens": tokens, "new_tokens_per_s": round(tokens / measured["seconds"], 1),
                                 "latency_p50_s": measured["latency_p50_s"], "latency_max_s": measured["latency_max_s"],
                                 "model_calls": b.decoder.stats["batches"] - batches}
            if single:
                measured = run_clients(server.url, pages[:single], 1, single)
                out["single"] = {"requests": single, "seconds_per_request": round(measured["seconds"] / single, 3),
                                 "latency_p50_s": measured["latency_p50_s"]}
            with urllib.request.urlopen(server.url + "/metrics", timeout=60) as resp:
                metrics = resp.read().decode()
        out["batch_metrics"] = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                                if line.startswith(("ocrvl_batch_size_count", "ocrvl_batch_size_sum"))}
        return out

    def genai_client(concurrency: int, count: int):
        """predict's genai-server backend (``--concurrency``) against serve over loopback."""
        from paddle_ocrvl_sft.predict import GenAIServerBackend, run
        from paddle_ocrvl_sft.serve.app import ServerThread, create_app
        from paddle_ocrvl_sft.serve.inputs import Limits

        b = backend("static", concurrency)
        app = create_app(b, model_name="bench", backend_name="transformers",
                         limits=Limits(max_batch=concurrency, max_concurrency=256, max_new_tokens=n, timeout=600))
        with ServerThread(app) as server:
            client = GenAIServerBackend(server.url + "/v1", concurrency=concurrency, timeout=600)
            jobs = [Job(str(p), "OCR:") for p in pages[:count]]
            outcome = timed(lambda: list(run(jobs, client, progress=False)), b, count, sync)
        outcome.update(concurrency=concurrency, retried=client.retried)
        return outcome

    def sized(count: int) -> int:
        return max(1, count // scale)

    plan = [  # most important first: the budget may stop the tail
        ("loop", lambda: loop(sized(4) if not args.tiny else 1)),
        ("predict_bs64_static", lambda: predict("static", 64, sized(128))),
        ("serve_64_clients", lambda: serve(sized(64), 2, 0)),
        ("predict_bs256_static", lambda: predict("static", 256, sized(1024))),
        ("serve_256_clients", lambda: serve(sized(256), 2, 4)),
        ("eval_bs256_1024_pages", lambda: evaluate_pages(sized(256), sized(1024))),
        ("predict_bs1_static", lambda: predict("static", 1, 4)),
        ("predict_bs128_static", lambda: predict("static", 128, sized(256))),
        ("genai_client_c64", lambda: genai_client(sized(64), sized(256))),
        ("predict_bs64_dynamic", lambda: predict("dynamic", 64, sized(64))),
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
            import traceback

            results["skipped"][name] = f"{type(exc).__name__}: {str(exc)[:300]} | {traceback.format_exc()[-1200:]}"
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
