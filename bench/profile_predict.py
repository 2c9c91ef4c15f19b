"""Where the time of a batched ``predict --backend transformers`` goes, stage by stage, on one GPU.

    python bench/profile_predict.py --out profile.json [--batches 64,256]

Same model and pages as bench_serve.py (the 0.9B architecture with random bf16 weights, 1344x448 PNG
pages, answers forced to 256 new tokens). For each batch size it times, with the device synchronized
around each stage: preparing the rows on CPU threads (PNG decode, image processor, tokenizer,
rotary positions), the host-to-device copy of the pixels, the vision tower alone, the whole prefill
(copy + vision tower + language model over the prompt), one decoding step (CUDA-graph replay and the
same step run eagerly, per cache length), capturing a graph, and the whole batch end to end. It also
checks that the static decoder's greedy tokens equal transformers' ``generate`` on a few pages.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_serve"))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from bench_serve import build_model, make_pages
    from paddle_ocrvl_sft.decoding import DEFAULT_BATCH_BUCKETS, kv_bucket
    from paddle_ocrvl_sft.predict import Job, TransformersBackend, hf_inputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out = {"conditions": {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
                          "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                          "python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
           "stages": {}, "errors": {}}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))

    def clock(fn, repeat: int = 1):
        sync()
        start = time.perf_counter()
        for _ in range(repeat):
            value = fn()
        sync()
        return (time.perf_counter() - start) / repeat, value

    hf = build_model(args.work / ("tiny" if args.tiny else "full"), args.tiny, device)
    batches = [int(b) for b in args.batches.split(",")]
    pages = make_pages(args.work / "pages", max(batches) * 2)
    n = args.new_tokens
    b = TransformersBackend(hf, device=device, max_new_tokens=n, generate_kwargs={"min_new_tokens": n},
                            batch_buckets=DEFAULT_BATCH_BUCKETS, batch_size=max(batches))
    dec = b.decoder
    t, _ = clock(b.warmup)
    out["stages"]["warmup_s"] = round(t, 2)
    out["stages"]["warmup_graphs"] = dict(dec.stats)
    save()

    # Greedy agreement with transformers' generate (not forced: each answer ends where the model says).
    try:
        from paddle_ocrvl_sft.predict import hf_decode

        free = TransformersBackend(hf, device=device, max_new_tokens=24, batch_buckets=DEFAULT_BATCH_BUCKETS)
        jobs = [Job(str(p), "OCR:") for p in pages[:8]]
        mine = free.batch(jobs)
        theirs = []
        for job in jobs:
            with Image.open(job.image) as image:
                theirs.append(hf_decode(free.model, free.processor, hf_inputs(free.processor, [image], ["OCR:"]), [24])[0])
        del free
        out["stages"]["agreement_with_generate"] = {"pages": len(jobs), "equal_texts": sum(a == c for a, c in zip(mine, theirs)),
                                                     "first": [mine[0][:80], theirs[0][:80]]}
    except Exception as exc:  # record and go on
        out["errors"]["agreement"] = f"{type(exc).__name__}: {exc}"[:800]
    save()

    for batch in batches:
        stage = out["stages"][f"batch_{batch}"] = {}
        try:
            jobs = [Job(str(p), "OCR:") for p in pages[:batch]]
            images = [Image.open(j.image) for j in jobs]
            t, rows = clock(lambda: b._inputs(jobs, images, list(range(batch))))
            stage["prepare_rows_s"] = round(t, 3)
            stage["prepare_ms_per_page"] = round(t / batch * 1000, 2)
            stage["prompt_tokens"] = rows[0].length
            one = [Image.open(j.image) for j in jobs[:16]]
            t, _ = clock(lambda: [b.prepare(j, im) for j, im in zip(jobs[:16], one)])
            stage["prepare_ms_per_page_one_thread"] = round(t / 16 * 1000, 2)

            pixels = torch.cat([r.pixel_values for r in rows])
            grid = torch.cat([r.image_grid_thw for r in rows])
            stage["pixel_bytes"] = pixels.numel() * pixels.element_size()
            t, _ = clock(lambda: pixels.to(device))
            stage["h2d_pageable_s"] = round(t, 4)
            pinned = pixels.pin_memory() if device == "cuda" else pixels
            t, gpu = clock(lambda: pinned.to(device, non_blocking=True))
            stage["h2d_pinned_s"] = round(t, 4)
            norm = ((gpu.float() * dec.rescale - dec.mean) / dec.std).to(dec.dtype)
            g = grid.to(device)
            with torch.inference_mode():
                clock(lambda: b.model.model.get_image_features(norm[: grid[0].prod()], g[:1]))
                t, _ = clock(lambda: b.model.model.get_image_features(norm, g))
            stage["vision_tower_s"] = round(t, 3)
            del norm, gpu

            longest = max(r.length for r in rows)
            bucket = batch
            with torch.inference_mode():
                dec._ensure(bucket, kv_bucket(longest + n), n)
                t, _ = clock(lambda: dec._prefill(rows, longest))
            stage["prefill_s"] = round(t, 3)
            stage["prefill_language_model_s"] = round(t - stage["vision_tower_s"], 3)

            with torch.inference_mode():
                state = dec._state
                for length in (kv_bucket(longest + 1), kv_bucket(longest + n)):
                    state.position.fill_(longest)
                    state.finished[:bucket].fill_(False)
                    state.cap[:bucket].fill_(10 ** 6)
                    state.step.fill_(1)
                    if dec.graphs:
                        t, _ = clock(lambda: dec._graph(bucket, length))
                        stage[f"capture_len{length}_s"] = round(t, 3)
                        graph = dec._graph(bucket, length)
                        t, _ = clock(graph.replay, repeat=50)
                        stage[f"step_graph_len{length}_ms"] = round(t * 1000, 3)
                        state.position.fill_(longest)
                    t, _ = clock(lambda: dec._step(bucket, length), repeat=10)
                    stage[f"step_eager_len{length}_ms"] = round(t * 1000, 3)

            done = []
            t, _ = clock(lambda: b.run_prepared(rows, lambda i, text: done.append(i)))
            stage["decode_batch_s (prefill + 256 steps)"] = round(t, 3)
            stage["decode_batch_new_tokens_per_s"] = round(batch * n / t, 1)
            jobs2 = [Job(str(p), "OCR:") for p in pages[:2 * batch]]
            b.batch_size = batch
            t, _ = clock(lambda: b.batch(jobs2))
            stage["end_to_end_2_batches_s"] = round(t, 3)
            stage["end_to_end_new_tokens_per_s"] = round(2 * batch * n / t, 1)
        except Exception:
            import traceback

            out["errors"][f"batch_{batch}"] = traceback.format_exc()[-3000:]
        print(json.dumps({f"batch_{batch}": stage}), flush=True)
        save()
    out["stages"]["decoder_stats"] = dict(dec.stats)
    if device == "cuda":
        out["conditions"]["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    save()
    print(json.dumps(out["errors"], indent=1)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
