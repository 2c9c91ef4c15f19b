"""decoding: the static-cache decoder answers as transformers' generate does, row by row, on the tiny model (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paddle_ocrvl_sft.decoding import batch_bucket, kv_bucket
from paddle_ocrvl_sft.predict import Job, TransformersBackend, hf_inputs
from paddle_ocrvl_sft.testing import build_tiny_model, receipt_image

PROMPTS = ["OCR:", "Table Recognition:", 'OCR:{"total": ""}', "Chart Recognition:", "Formula Recognition:"]


@pytest.fixture(scope="module")
def hf_bundle(tmp_path_factory) -> Path:
    from paddle_ocrvl_sft.export import export

    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base", "base")
    export(base, base, root / "hf", fmt="hf", verify=False)
    return root / "hf"


@pytest.fixture(scope="module")
def backend(hf_bundle):
    return TransformersBackend(hf_bundle, device="cpu", batch_size=4, max_new_tokens=24)


def generate_ids(backend, job: Job, cap: int, **kwargs) -> list[int]:
    """transformers' own greedy generate on one job: the new token ids, as generate returns them."""
    import torch

    inputs = hf_inputs(backend.processor, [job.image], [job.prompt])
    image_processor = backend.processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, -1, 1, 1)
    inputs["pixel_values"] = (inputs["pixel_values"] * image_processor.rescale_factor - mean) / std
    with torch.no_grad():
        out = backend.model.generate(**inputs, max_new_tokens=cap, do_sample=False, use_cache=True, **kwargs)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def jobs_of_mixed_shapes(count: int) -> list[Job]:
    """Distinct images of different widths (so different prompt lengths) and prompts."""
    return [Job(receipt_image({"n": str(i), "total": f"{i}.50"}, width=160 + 24 * (i % 7)), PROMPTS[i % len(PROMPTS)],
                max_new_tokens=1 + (i * 5) % 24) for i in range(count)]


def decode(backend, jobs: list[Job], **kwargs) -> dict[int, list[int]]:
    rows = [backend.prepare(job) for job in jobs]
    answers: dict[int, list[int]] = {}
    backend.decoder.run(rows, lambda i, ids: answers.__setitem__(i, ids), **kwargs)
    return answers


def test_buckets():
    assert [kv_bucket(n) for n in (1, 256, 257, 780, 2048, 2049, 8192, 8193)] == [256, 256, 512, 1024, 2048, 3072, 8192, 12288]
    assert [batch_bucket(n, (1, 2, 4, 8)) for n in (1, 3, 8, 9)] == [1, 4, 8, 9]


@pytest.mark.slow
def test_each_row_equals_generate_alone_mixed_lengths_caps_and_buckets(backend):
    """Six rows in a bucket of 8 (two idle rows), prompts of different lengths, each with its own cap."""
    jobs = jobs_of_mixed_shapes(6)
    answers = decode(backend, jobs)
    assert sorted(answers) == list(range(6))
    for i, job in enumerate(jobs):
        assert answers[i] == generate_ids(backend, job, job.max_new_tokens), i
        assert len(answers[i]) == job.max_new_tokens  # the tiny model never ends on its own


@pytest.mark.slow
def test_an_end_token_ends_its_row_only_as_in_generate(backend, hf_bundle):
    """A frequent token made the end-of-sequence token: rows end where generate ends them, the
    others go on; min_new_tokens holds the end back as generate's logits processor does."""
    from paddle_ocrvl_sft.predict import static_decoder

    jobs = jobs_of_mixed_shapes(5)
    frequent = generate_ids(backend, jobs[0], 24)[2]  # a token the tiny model says early
    decoder = static_decoder(backend.model, backend.processor, batch_buckets=(1, 8))
    decoder.stop_ids = decoder.stop_ids.new_tensor([frequent])
    original, backend.decoder = backend.decoder, decoder
    try:
        for min_new in (0, 4):
            answers = decode(backend, jobs, min_new_tokens=min_new)
            ends = 0
            for i, job in enumerate(jobs):
                expected = generate_ids(backend, job, job.max_new_tokens, eos_token_id=frequent, pad_token_id=0,
                                        min_new_tokens=min_new)
                if frequent in expected:
                    expected = expected[:expected.index(frequent) + 1]  # generate pads after the end
                    ends += 1
                assert answers[i] == expected, (min_new, i)
            assert ends >= 2  # the case under test happened
    finally:
        backend.decoder = original


@pytest.mark.slow
def test_rows_are_answered_as_they_end_and_row_stop_ends_a_row(backend):
    jobs = [Job(receipt_image({"n": str(i)}), "OCR:", max_new_tokens=cap) for i, cap in enumerate((1, 20, 9))]
    rows = [backend.prepare(job) for job in jobs]
    order = []
    backend.decoder.run(rows, lambda i, ids: order.append((i, len(ids))))
    assert order == [(0, 1), (2, 9), (1, 20)]  # the short ones first: nobody waits for the longest

    order.clear()
    backend.decoder.run(rows, lambda i, ids: order.append((i, len(ids))), row_stop=lambda ids: len(ids) >= 10)
    assert dict(order) == {0: 1, 1: 16, 2: 9}  # looked at every 8 steps: row 1 stopped at the check after 10


@pytest.mark.slow
def test_the_kv_store_grows_mid_batch_and_keeps_what_it_holds(hf_bundle):
    """A cap past the store's length: the store is reallocated during decoding; answers unchanged."""
    small = TransformersBackend(hf_bundle, device="cpu", batch_size=2, max_new_tokens=300)
    job = Job(receipt_image({"n": "1"}, width=160), "OCR:", max_new_tokens=300)
    small.decoder._ensure(2, kv_bucket(small.prepare(job).length + 1), 1)  # room for the prompt only
    allocations = small.decoder.stats["store_allocations"]
    (answer,) = decode(small, [job]).values()
    assert small.decoder.stats["store_allocations"] > allocations
    assert answer == generate_ids(small, job, 300)


@pytest.mark.slow
def test_a_row_that_ends_after_the_store_grew_ends_the_batch(hf_bundle):
    """The state is reallocated with the store: the loop must see the rows the new one ended (an
    end token, here a frequent one held back by min_new_tokens until after the growth), not decode
    on to the cap."""
    from paddle_ocrvl_sft.predict import static_decoder

    small = TransformersBackend(hf_bundle, device="cpu", batch_size=1, max_new_tokens=600)
    job = Job(receipt_image({"n": "1"}, width=160), "OCR:", max_new_tokens=600)
    length = small.prepare(job).length
    grows_at = kv_bucket(length + 1) - length  # new tokens when the store is reallocated
    frequent = generate_ids(small, job, 8)[2]
    small.decoder = static_decoder(small.model, small.processor, batch_buckets=(1,))
    small.decoder.stop_ids = small.decoder.stop_ids.new_tensor([frequent])
    small.decoder._ensure(1, kv_bucket(length + 1), 1)  # room for the prompt only
    steps = []
    step = small.decoder._step
    small.decoder._step = lambda *args: (steps.append(1), step(*args))[1]
    (answer,) = decode(small, [job], min_new_tokens=grows_at + 4).values()
    expected = generate_ids(small, job, 600, eos_token_id=frequent, pad_token_id=0, min_new_tokens=grows_at + 4)
    assert frequent in expected  # the case under test: it ends after the growth, long before the cap
    assert answer == expected[:expected.index(frequent) + 1]
    assert len(steps) < len(answer) + small.decoder.check_every  # no decoding on after the end was seen


@pytest.mark.slow
def test_batch_orders_texts_and_matches_the_dynamic_cache(backend, hf_bundle):
    jobs = jobs_of_mixed_shapes(7)
    dynamic = TransformersBackend(hf_bundle, device="cpu", batch_size=3, max_new_tokens=24, kv_cache="dynamic")
    assert backend.batch(jobs) == dynamic.batch(jobs)


def test_static_cache_refuses_generate_options(hf_bundle):
    from paddle_ocrvl_sft.errors import UsageError

    with pytest.raises(UsageError, match="--kv-cache static takes no generate options \\(repetition_penalty\\)"):
        TransformersBackend(hf_bundle, device="cpu", generate_kwargs={"repetition_penalty": 1.1})
