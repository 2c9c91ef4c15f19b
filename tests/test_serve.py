"""serve: the HTTP API on 127.0.0.1 with the tiny model (paddle and transformers backends), real requests."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from paddle_ocrvl_sft.predict import Job, PaddleBackend, TransformersBackend, parse_kie
from paddle_ocrvl_sft.prompts import kie_prompt
from paddle_ocrvl_sft.serve.app import ServerThread, create_app
from paddle_ocrvl_sft.serve.inputs import Limits
from paddle_ocrvl_sft.testing import build_tiny_model, receipt_image
from paddle_ocrvl_sft.tokens import PixelBounds

MODEL = "PaddleOCR-VL-0.9B"
MAX_NEW = 10


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """(paddle bundle, hf bundle) of the same tiny random-weight model."""
    from paddle_ocrvl_sft.export import export

    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base", "base")
    export(base, base, root / "hf", fmt="hf", verify=False)
    return base, root / "hf"


@pytest.fixture(scope="module")
def receipt_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "receipt.png"
    receipt_image({"total": "12.50", "date": "2024-01-02"}).save(path)
    return path


def make_backend(kind: str, bundles):
    base, hf = bundles
    if kind == "paddle":
        return PaddleBackend(base, device="cpu", max_new_tokens=MAX_NEW)
    return TransformersBackend(hf, device="cpu", max_new_tokens=MAX_NEW, batch_size=8)


@pytest.fixture(scope="module")
def servers(bundles):
    """``servers(kind)`` -> (url, backend): the real tiny model served once per backend kind."""
    from contextlib import ExitStack

    started = {}
    with ExitStack() as stack:
        def serve(kind: str):
            if kind not in started:
                backend = make_backend(kind, bundles)
                app = create_app(backend, model_name=MODEL, backend_name=kind, limits=Limits(max_new_tokens=MAX_NEW),
                                 model_bounds=PixelBounds.from_model_dir(bundles[0]))
                started[kind] = stack.enter_context(ServerThread(app)).url, backend
            return started[kind]

        yield serve


BOTH = pytest.mark.parametrize("kind", ["paddle", "transformers"])


def call(url: str, path: str, body=None, *, headers=None, method=None, raw: bytes | None = None, timeout=120):
    """(status, parsed JSON or text) of one HTTP request; never raises for 4xx/5xx."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})} if data is not None else dict(headers or {})
    request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, payload, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, payload, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    return status, json.loads(payload) if ctype.startswith("application/json") else payload.decode()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = "----paddle-ocrvl-sft-test"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def data_url(path: Path) -> str:
    return "data:image/png;base64," + b64(path)


# --- the routes with the real tiny model ---------------------------------------------------------------


@pytest.mark.slow
@BOTH
def test_ocr_answers_what_the_backend_answers(servers, kind, receipt_png):
    url, backend = servers(kind)
    from PIL import Image

    with Image.open(receipt_png) as image:
        expected = {prompt: backend(Job(image.convert("RGB"), prompt)) for prompt in ("OCR:", "Table Recognition:")}

    body, headers = multipart({"prompt": "table"}, {"image": ("receipt.png", receipt_png.read_bytes())})
    status, answer = call(url, "/ocr", raw=body, headers=headers)
    assert status == 200, answer
    assert (answer["text"], answer["prompt"], answer["model"]) == (expected["Table Recognition:"], "Table Recognition:", MODEL)
    assert answer["latency_ms"] > 0

    status, answer = call(url, "/ocr", {"image": b64(receipt_png)})  # JSON + base64, default task OCR
    assert status == 200 and answer["text"] == expected["OCR:"] and answer["prompt"] == "OCR:"
    status, answer = call(url, "/ocr", {"image": data_url(receipt_png), "prompt": "Read the total:", "max_new_tokens": 2})
    assert status == 200 and answer["prompt"] == "Read the total:"


@pytest.mark.slow
@BOTH
def test_extract_uses_the_training_prompt_and_parses_the_answer(servers, kind, receipt_png):
    url, _ = servers(kind)
    status, answer = call(url, "/extract", {"image": b64(receipt_png), "fields": ["total", "商户名称"]})
    assert status == 200, answer
    assert answer["prompt"] == kie_prompt({"total": "", "商户名称": ""}) == 'OCR:{"total": "", "商户名称": ""}'
    assert answer["fields"] == parse_kie(answer["text"])  # the random model's text, parsed the same way

    query = {"items": [{"name": "", "price": ""}], "total": ""}
    body, headers = multipart({"query": json.dumps(query), "strict": "true"},
                              {"image": ("r.png", receipt_png.read_bytes())})
    status, answer = call(url, "/extract", raw=body, headers=headers)
    assert status == 200 and answer["prompt"] == kie_prompt(query)


@pytest.mark.slow
@BOTH
def test_openai_client_gets_an_answer(servers, kind, receipt_png):
    from openai import OpenAI

    url, backend = servers(kind)
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [MODEL]
    response = client.chat.completions.create(model=MODEL, max_completion_tokens=MAX_NEW, temperature=0, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(receipt_png)}},
                                     {"type": "text", "text": "OCR:"}]}])
    status, direct = call(url, "/ocr", {"image": b64(receipt_png)})
    assert status == 200
    assert response.choices[0].message.content == direct["text"]
    # how the answer ended, as the backend says it for the same request (a random tiny model may run to its cap)
    from paddle_ocrvl_sft.loop_guard import finish_of
    from paddle_ocrvl_sft.predict import Job

    ended = finish_of(backend(Job(str(receipt_png), "OCR:", max_new_tokens=MAX_NEW)))
    assert ended in ("stop", "length")
    assert response.choices[0].finish_reason == ended and response.model == MODEL


@pytest.mark.slow
def test_paddleocr_doc_parser_runs_against_the_server(servers, receipt_png, tmp_path):
    """PaddleOCR's own pipeline as the client (--vl_rec_backend vllm-server), offline, layout detection off."""
    url, _ = servers("transformers")
    exe = Path(sys.executable).with_name("paddleocr")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "paddleocr"]
    cmd += ["doc_parser", "-i", str(receipt_png), "--vl_rec_backend", "vllm-server", "--vl_rec_server_url", url + "/v1",
            "--vl_rec_model_name", MODEL, "--use_layout_detection", "False", "--max_new_tokens", str(MAX_NEW),
            "--save_path", str(tmp_path / "res")]
    before = metric(url, 'ocrvl_requests_total{route="/v1/chat/completions",status="200"}')
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = (tmp_path / "res").glob("*_res.json")
    (block,) = json.loads(res.read_text())["parsing_res_list"]
    assert metric(url, 'ocrvl_requests_total{route="/v1/chat/completions",status="200"}') == before + 1
    # The pipeline sends the page as JPEG with its own pixel bounds: ask the same way to compare.
    from PIL import Image

    with Image.open(receipt_png) as image:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG")
    status, answer = call(url, "/v1/chat/completions", {
        "model": MODEL, "max_completion_tokens": MAX_NEW, "mm_processor_kwargs": {"min_pixels": 112896, "max_pixels": 2822400},
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()}},
            {"type": "text", "text": "OCR:"}]}]})
    assert status == 200 and block["block_content"] == answer["choices"][0]["message"]["content"].strip()


def metric(url: str, series: str) -> float:
    return _metric(call(url, "/metrics")[1], series)


def _metric(text: str, series: str) -> float:
    match = re.search(re.escape(series) + r" (\S+)", text)
    return float(match.group(1)) if match else 0.0


# --- bad requests: 4xx with a message, never a 500, and the server keeps serving --------------------


@pytest.fixture(scope="module")
def guarded(bundles):
    """The transformers backend behind an API key and small limits."""
    backend = make_backend("transformers", bundles)
    limits = Limits(max_body_bytes=300_000, max_image_pixels=400 * 400, max_new_tokens=MAX_NEW)
    app = create_app(backend, model_name=MODEL, backend_name="transformers", limits=limits, api_key="s3cret")
    with ServerThread(app) as server:
        yield server.url


KEY = {"Authorization": "Bearer s3cret"}


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return buf.getvalue()


def _bad_requests(receipt: Path):
    good = b64(receipt)
    huge_png = base64.b64encode(_png(500, 500)).decode()
    upload, form_headers = multipart({}, {"image": ("notes.txt", b"hello, not an image")})
    no_image, no_image_headers = multipart({"prompt": "ocr"}, {})
    chat = lambda content, **extra: {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    image_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + good}}
    text_part = {"type": "text", "text": "OCR:"}
    return [
        # (name, path, kwargs for call(), status, message fragment)
        ("no key", "/ocr", dict(body={"image": good}, headers={}), 401, "needs an API key"),
        ("wrong key", "/ocr", dict(body={"image": good}, headers={"Authorization": "Bearer nope"}), 401, "wrong API key"),
        ("metrics need the key", "/metrics", dict(headers={}), 401, "needs an API key"),
        ("oversized body", "/ocr", dict(raw=b"x" * 400_000, headers=KEY), 413, "more than the server's limit of 300000"),
        ("too many pixels", "/ocr", dict(body={"image": huge_png}, headers=KEY), 413, "500x500 = 250000 pixels"),
        ("not an image", "/ocr", dict(raw=upload, headers={**KEY, **form_headers}), 415, "not an image PIL can read"),
        ("no image in the form", "/ocr", dict(raw=no_image, headers={**KEY, **no_image_headers}), 422, "image: missing"),
        ("bad JSON", "/ocr", dict(raw=b'{"image": ', headers={**KEY, "Content-Type": "application/json"}), 400, "not valid JSON"),
        ("a path", "/ocr", dict(body={"image": "/etc/passwd"}, headers=KEY), 422, "looks like a file path"),
        ("a relative path", "/extract", dict(body={"image": "../receipt.png", "fields": "a"}, headers=KEY), 422, "file path"),
        ("a file URL", "/ocr", dict(body={"image": "file:///etc/passwd"}, headers=KEY), 422, "file URLs are not fetched"),
        ("an http URL", "/ocr", dict(body={"image": "http://127.0.0.1:9/r.png"}, headers=KEY), 422, "http URLs are not fetched"),
        ("unknown field", "/ocr", dict(body={"image": good, "promt": "ocr"}, headers=KEY), 422, "promt: unknown field"),
        ("bad token cap", "/ocr", dict(body={"image": good, "max_new_tokens": 0}, headers=KEY), 422, "max_new_tokens"),
        ("no fields", "/extract", dict(body={"image": good}, headers=KEY), 422, "give either fields"),
        ("query not an object", "/extract", dict(body={"image": good, "query": "[1]"}, headers=KEY), 422, "must be a JSON object"),
        ("not JSON content", "/ocr", dict(raw=b"image=1", headers={**KEY, "Content-Type": "text/plain"}), 415, "send application/json"),
        ("chat without an image", "/v1/chat/completions", dict(body=chat("OCR:"), headers=KEY), 422, "exactly one image_url"),
        ("chat with two images", "/v1/chat/completions", dict(body=chat([image_part, image_part, text_part]), headers=KEY), 422, "got 2"),
        ("chat streaming", "/v1/chat/completions", dict(body=chat([image_part, text_part], stream=True), headers=KEY), 422, "streaming"),
        ("chat system turn", "/v1/chat/completions",
         dict(body={"model": MODEL, "messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": [image_part, text_part]}]}, headers=KEY),
         422, "one user message"),
        ("chat image URL", "/v1/chat/completions",
         dict(body=chat([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}, text_part]), headers=KEY), 422, "not fetched"),
        ("chat bad pixels", "/v1/chat/completions",
         dict(body=chat([image_part, text_part], mm_processor_kwargs={"min_pixels": 9, "max_pixels": 3}), headers=KEY), 422, "min_pixels"),
        ("chat pixels past the limit", "/v1/chat/completions",
         dict(body=chat([image_part, text_part], mm_processor_kwargs={"min_pixels": 10**10, "max_pixels": 10**10}),
              headers=KEY), 422, "mm_processor_kwargs.min_pixels: 10000000000 is above the server's --max-image-pixels"),
        ("chat messages missing", "/v1/chat/completions", dict(body={"model": MODEL}, headers=KEY), 422, "messages"),
        ("unknown route", "/v2/nothing", dict(headers=KEY), 404, "Not Found"),
        ("wrong method", "/ocr", dict(headers=KEY, method="GET"), 405, "Method Not Allowed"),
    ]


@pytest.mark.slow
def test_bad_requests_are_4xx_with_a_message_and_the_server_keeps_serving(guarded, receipt_png):
    for name, path, kwargs, status, fragment in _bad_requests(receipt_png):
        got, answer = call(guarded, path, **kwargs)
        assert got == status, (name, answer)
        assert fragment in answer["error"]["message"], (name, answer)
    assert call(guarded, "/health")[0] == 200  # no key needed
    status, answer = call(guarded, "/ocr", {"image": b64(receipt_png)}, headers=KEY)
    assert status == 200 and answer["text"]
    assert call(guarded, "/metrics", headers=KEY)[0] == 200
    assert metric_with_key(guarded, 'ocrvl_request_errors_total{route="/ocr",status="413"}') == 2
    assert metric_with_key(guarded, 'ocrvl_requests_total{route="/ocr",status="500"}') == 0


def metric_with_key(url: str, series: str) -> float:
    return _metric(call(url, "/metrics", headers=KEY)[1], series)


@pytest.mark.slow
def test_a_chunked_body_past_the_limit_is_refused(guarded):
    """No Content-Length: the body is counted as it arrives."""
    import http.client

    host, port = guarded.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"x" * 50_000 for _ in range(10))
    conn.request("POST", "/ocr", body=chunks, headers={**KEY, "Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and "more than the server's limit" in json.loads(resp.read())["error"]["message"]
    conn.close()


@pytest.mark.slow
def test_the_openai_client_with_the_api_key(guarded, receipt_png):
    from openai import AuthenticationError, OpenAI

    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(receipt_png)}},
                                             {"type": "text", "text": "OCR:"}]}]
    ok = OpenAI(base_url=guarded + "/v1", api_key="s3cret", max_retries=0)
    assert ok.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content
    with pytest.raises(AuthenticationError, match="wrong API key"):
        OpenAI(base_url=guarded + "/v1", api_key="guess", max_retries=0).chat.completions.create(model=MODEL, messages=messages)


# --- batching, admission, timeout (a controllable backend: the server logic, not the model) ---------


class GatedBackend:
    """Answers "text for PROMPT"; batch k waits for ``gates[k]`` (open when not given) and sets
    ``entered[k]`` when it starts; records every batch's size and jobs."""

    def __init__(self, gated: int = 1):
        self.gates = [threading.Event() for _ in range(gated)]
        self.entered = [threading.Event() for _ in range(gated)]
        self.batches: list[list] = []

    @property
    def gate(self) -> threading.Event:
        return self.gates[0]

    def batch(self, jobs):
        k = len(self.batches)
        self.batches.append(list(jobs))
        if k < len(self.gates):
            self.entered[k].set()
            self.gates[k].wait(60)
        return [f"text for {job.prompt}" for job in jobs]


def tiny_png_b64() -> str:
    return base64.b64encode(_png(64, 32)).decode()


def health(url: str) -> dict:
    return call(url, "/health")[1]


def wait_until(condition, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` (a server state the test waits for, not a guess at timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_requests_that_arrive_together_share_a_model_call():
    backend = GatedBackend()
    app = create_app(backend, model_name="m", backend_name="test", limits=Limits(max_batch=8, batch_wait=0.05))
    with ServerThread(app) as server, ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64(), "prompt": f"p{i}"}) for i in range(12)]
        wait_until(lambda: health(server.url)["in_flight"] == 12, "all twelve requests in flight")
        backend.gate.set()
        answers = [f.result() for f in futures]
        assert [a[1]["text"] for a in answers] == [f"text for p{i}" for i in range(12)]
        sizes = [len(b) for b in backend.batches]
        assert sum(sizes) == 12 and max(sizes) == 8 and len(sizes) < 12
        status, text = call(server.url, "/metrics")
        assert status == 200
        assert f"ocrvl_batch_size_count {float(len(sizes))}" in text
        assert 'ocrvl_requests_total{route="/ocr",status="200"} 12.0' in text


def test_requests_that_arrive_during_a_batch_form_the_next_one():
    """While batch 1 runs, 20 requests arrive: they become ONE next batch (up to --max-batch), not 20."""
    backend = GatedBackend()
    # A long gather limit: requests admitted but still decoding their image are waited for whatever the load.
    app = create_app(backend, model_name="m", backend_name="test", limits=Limits(max_batch=32, gather_limit=60))
    with ServerThread(app) as server, ThreadPoolExecutor(21) as pool:
        first = pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64(), "prompt": "first"})
        assert backend.entered[0].wait(30)
        rest = [pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64(), "prompt": f"p{i}"}) for i in range(20)]
        wait_until(lambda: health(server.url)["in_flight"] == 21, "twenty requests queued behind the first batch")
        backend.gate.set()
        assert first.result()[1]["text"] == "text for first"
        assert [f.result()[1]["text"] for f in rest] == [f"text for p{i}" for i in range(20)]
    assert [len(b) for b in backend.batches] == [1, 20]


def test_a_batch_waits_for_a_request_whose_body_is_still_arriving():
    """Adaptive gathering: a request whose body is being read is waited for (no fixed cut-off)."""
    import http.client

    backend = GatedBackend(gated=0)
    app = create_app(backend, model_name="m", backend_name="test", limits=Limits(max_batch=8, gather_limit=60))
    body = json.dumps({"image": tiny_png_b64(), "prompt": "slow"}).encode()
    with ServerThread(app) as server, ThreadPoolExecutor(1) as pool:
        host, port = server.url.removeprefix("http://").split(":")
        slow = http.client.HTTPConnection(host, int(port), timeout=60)
        slow.putrequest("POST", "/ocr")
        slow.putheader("Content-Type", "application/json")
        slow.putheader("Content-Length", str(len(body)))
        slow.endheaders(body[:10])  # headers and the first bytes: the request is on its way
        wait_until(lambda: health(server.url)["in_flight"] == 1, "the slow request admitted")
        fast = pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64(), "prompt": "fast"})
        wait_until(lambda: health(server.url)["in_flight"] == 2, "the fast request admitted")
        slow.send(body[10:])
        response = slow.getresponse()
        assert response.status == 200 and json.loads(response.read())["text"] == "text for slow"
        assert fast.result()[1]["text"] == "text for fast"
        slow.close()
    assert [sorted(j.prompt for j in b) for b in backend.batches] == [["fast", "slow"]]


def test_a_full_queue_gets_503_with_retry_after_and_slow_ones_408():
    backend = GatedBackend()
    app = create_app(backend, model_name="m", backend_name="test",
                     limits=Limits(max_concurrency=2, timeout=1.0, max_batch=1, batch_wait=0))
    with ServerThread(app) as server, ThreadPoolExecutor(3) as pool:
        first = [pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64()}) for _ in range(2)]
        wait_until(lambda: health(server.url)["in_flight"] == 2, "two requests in flight")
        request = urllib.request.Request(server.url + "/ocr", data=json.dumps({"image": tiny_png_b64()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 503 and int(refused.value.headers["Retry-After"]) >= 1
        assert "requests queued or decoding" in json.loads(refused.value.read())["error"]["message"]
        assert [f.result()[0] for f in first] == [408, 408]  # the gate stayed shut past --timeout
        assert "no answer within 1 s" in first[0].result()[1]["error"]["message"]
        backend.gate.set()
        status, answer = call(server.url, "/ocr", {"image": tiny_png_b64()})
        assert status == 200 and answer["text"] == "text for OCR:"  # still serving


def test_limits_hold_under_a_burst():
    """A burst past the queue while the model is busy: exactly the admitted ones answered, the rest
    503 + Retry-After; oversized bodies and pixel bombs refused in the same burst."""
    backend = GatedBackend()
    limits = Limits(max_concurrency=6, max_batch=8, max_body_bytes=200_000, max_image_pixels=300 * 300)
    app = create_app(backend, model_name="m", backend_name="test", limits=limits)
    big = base64.b64encode(_png(400, 400)).decode()
    with ServerThread(app) as server, ThreadPoolExecutor(40) as pool:
        blocker = pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64(), "prompt": "blocker"})
        assert backend.entered[0].wait(30)
        bad = [pool.submit(call, server.url, "/ocr", raw=b"x" * 300_000) for _ in range(5)]
        bad += [pool.submit(call, server.url, "/ocr", {"image": big}) for _ in range(5)]
        assert [f.result()[0] for f in bad] == [413] * 10
        burst = [pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64(), "prompt": f"p{i}"}) for i in range(30)]
        wait_until(lambda: sum(f.done() for f in burst) == 25, "25 of the burst refused")
        assert health(server.url)["in_flight"] == 6
        backend.gate.set()
        answers = [f.result() for f in burst]
    ok = [(i, a) for i, (status, a) in enumerate(answers) if status == 200]
    assert len(ok) == 5 and all(a["text"] == f"text for p{i}" for i, a in ok)
    assert sorted(status for status, _ in answers) == [200] * 5 + [503] * 25
    assert blocker.result()[1]["text"] == "text for blocker"


class WarmingBackend(GatedBackend):
    """A backend whose warm-up waits for ``warm`` (the static cache's graphs, in the real one)."""

    def __init__(self):
        super().__init__(gated=0)
        self.warm = threading.Event()

    def warmup(self):
        assert self.warm.wait(60)


def test_health_says_warming_until_the_model_is_ready_and_requests_wait_for_it():
    backend = WarmingBackend()
    app = create_app(backend, model_name="m", backend_name="test")
    with ServerThread(app, ready=False) as server, ThreadPoolExecutor(1) as pool:
        status, body = call(server.url, "/health")
        assert (status, body["status"]) == (503, "warming")
        waiting = pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64()})
        wait_until(lambda: health(server.url)["in_flight"] == 1, "a request queued while warming")
        backend.warm.set()
        status, answer = waiting.result()
        assert status == 200 and answer["text"] == "text for OCR:"
        assert call(server.url, "/health") == (200, {"status": "ok", "model": "m", "backend": "test", "in_flight": 0})


class PreparingBackend:
    """Prepares jobs on the batcher's threads (as the transformers backend does); ``prepare`` waits for
    ``release`` (``preparing`` set when it starts); ``warmup`` waits for ``warm`` and fails if told to."""

    def __init__(self, warm_fails: bool = False):
        self.preparing, self.release, self.warm = threading.Event(), threading.Event(), threading.Event()
        self.warm_fails = warm_fails
        self.ran: list = []

    def warmup(self):
        assert self.warm.wait(60)
        if self.warm_fails:
            raise RuntimeError("no GPU")

    def prepare(self, job):
        self.preparing.set()
        assert self.release.wait(60)
        return job

    def run_prepared(self, items, on_done):
        self.ran += items
        for i, job in enumerate(items):
            on_done(i, f"text for {job.prompt}")


def test_a_request_being_prepared_when_the_warm_up_fails_gets_503_not_a_timeout():
    backend = PreparingBackend(warm_fails=True)
    app = create_app(backend, model_name="m", backend_name="test", limits=Limits(timeout=120))
    with ServerThread(app, ready=False) as server, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, server.url, "/ocr", {"image": tiny_png_b64()})
        assert backend.preparing.wait(30)
        backend.warm.set()  # the worker stops while the job is still being prepared
        wait_until(lambda: health(server.url)["status"] == "down", "the failed warm-up")
        backend.release.set()
        status, answer = waiting.result(timeout=30)  # at once, not after --timeout (120 s)
        assert status == 503 and "warm-up failed: RuntimeError: no GPU" in answer["error"]["message"]
    assert backend.ran == []


def test_close_fails_the_jobs_still_being_prepared_and_refuses_new_ones():
    from paddle_ocrvl_sft.serve.batcher import MicroBatcher, Unavailable

    backend = PreparingBackend()
    backend.warm.set()
    batcher = MicroBatcher(backend, prepare_threads=1)
    wait_until(lambda: batcher.status == "ok", "the warm-up")
    preparing = batcher.submit(Job("image", "being prepared"))
    queued = batcher.submit(Job("image", "waiting for a prepare thread"))
    assert backend.preparing.wait(30)
    batcher.close(timeout=30)
    assert not batcher.alive
    backend.release.set()
    for future in (preparing, queued):  # answered at once, not left for the request's --timeout
        assert isinstance(future.exception(timeout=30), Unavailable)
    with pytest.raises(Unavailable):
        batcher.submit(Job("image", "after close"))
    assert batcher.on_the_way(time.monotonic()) == (False, False)  # nothing left counted as on its way
    assert backend.ran == []


def test_a_submit_while_close_waits_for_the_last_batch_is_refused_and_not_counted():
    from paddle_ocrvl_sft.serve.batcher import MicroBatcher, Unavailable

    class Slow(PreparingBackend):
        def __init__(self):
            super().__init__()
            self.warm.set()
            self.release.set()
            self.running, self.finish = threading.Event(), threading.Event()

        def run_prepared(self, items, on_done):
            self.running.set()
            assert self.finish.wait(60)
            super().run_prepared(items, on_done)

    backend = Slow()
    batcher = MicroBatcher(backend)
    running = batcher.submit(Job("image", "running"))
    assert backend.running.wait(30)
    batcher.close(timeout=0)  # the worker is still in its batch: close() returns, the prepare threads are shut
    assert batcher.alive
    with pytest.raises(Unavailable):
        batcher.submit(Job("image", "after close"))
    assert batcher.on_the_way(time.monotonic()) == (False, False)
    backend.finish.set()
    assert running.result(timeout=30) == "text for running"  # the batch in progress is finished


def test_a_genai_server_batch_answers_each_request_from_its_own_outcome():
    """One failed upstream request fails its own request only: the others keep the answers they got,
    and no request is sent upstream twice (no retry in halves)."""
    from paddle_ocrvl_sft.errors import UserError
    from paddle_ocrvl_sft.predict import GenAIServerBackend
    from paddle_ocrvl_sft.serve.batcher import MicroBatcher

    class Upstream(GenAIServerBackend):
        def __init__(self):
            super().__init__("http://127.0.0.1:9/v1", model="m", concurrency=4)
            self.sent: list[str] = []
            self.warm = threading.Event()

        def warmup(self):  # holds the worker until every job is queued: they form one batch
            assert self.warm.wait(60)

        def __call__(self, job):
            self.sent.append(job.prompt)
            if job.prompt == "bad":
                raise UserError("HTTP 500: the upstream model failed")
            return f"text for {job.prompt}"

    upstream = Upstream()
    sizes = []
    batcher = MicroBatcher(upstream, on_batch=lambda size, seconds: sizes.append(size))
    futures = {prompt: batcher.submit(Job("image", prompt)) for prompt in ("a", "bad", "b", "c")}
    upstream.warm.set()
    assert [futures[p].result(timeout=30) for p in ("a", "b", "c")] == ["text for a", "text for b", "text for c"]
    assert "HTTP 500" in str(futures["bad"].exception(timeout=30))
    batcher.close(timeout=30)
    assert sizes == [4] and sorted(upstream.sent) == ["a", "b", "bad", "c"]


def test_client_pixel_bounds_above_the_models_or_the_servers_limit_are_refused():
    from paddle_ocrvl_sft.serve.inputs import ApiError, pixel_bounds

    model = PixelBounds(112896, 2822400)
    assert pixel_bounds({"min_pixels": 112896, "max_pixels": 1003520}, model) == PixelBounds(112896, 1003520)
    assert pixel_bounds({"max_pixels": 2822400}, model) == model
    for kwargs, limits, named in (({"min_pixels": 10**10, "max_pixels": 10**10}, Limits(), "the model's max_pixels"),
                                  ({"max_pixels": 2822401}, Limits(), "the model's max_pixels"),
                                  ({"min_pixels": 200_000}, Limits(max_image_pixels=160_000), "--max-image-pixels")):
        with pytest.raises(ApiError) as refused:
            pixel_bounds(kwargs, model, limits)
        assert refused.value.status == 422 and named in refused.value.message
        assert f"mm_processor_kwargs.{next(iter(kwargs))}" in refused.value.message


# --- under load with the real tiny model: nothing lost or mixed up ----------------------------------------


class HeldRows:
    """The transformers backend with batch k held at ``gates[k]`` (``entered[k]`` set when it starts)."""

    def __init__(self, backend, held: int = 0):
        self.backend = backend
        self.gates = [threading.Event() for _ in range(held)]
        self.entered = [threading.Event() for _ in range(held)]
        self.sizes: list[int] = []
        self.on_done_hook = None

    def warmup(self):
        self.backend.warmup()

    def prepare(self, job):
        return self.backend.prepare(job)

    def run_prepared(self, items, on_done):
        """The real batch; ``on_done_hook(on_done, i, row, text)`` sees each answer and sends it on."""
        k = len(self.sizes)
        self.sizes.append(len(items))
        if k < len(self.gates):
            self.entered[k].set()
            assert self.gates[k].wait(60)
        hook = self.on_done_hook
        if hook is None:
            return self.backend.run_prepared(items, on_done)
        self.backend.run_prepared(items, lambda i, text: hook(on_done, i, items[i], text))


@pytest.fixture(scope="module")
def row_backend(bundles):
    return TransformersBackend(bundles[1], device="cpu", max_new_tokens=MAX_NEW, batch_size=64)


def distinct_pages(count: int) -> list[bytes]:
    pages = []
    for i in range(count):
        buf = io.BytesIO()
        receipt_image({"n": f"{i:03d}", "total": f"{i * 3}.{i % 100:02d}"}, width=160 + 32 * (i % 4)).save(buf, format="PNG")
        pages.append(buf.getvalue())
    return pages


def alone(bundles, jobs, max_new_tokens: int = MAX_NEW) -> list[str]:
    """Each job run alone (a batch of one) by a separate backend instance."""
    single = TransformersBackend(bundles[1], device="cpu", max_new_tokens=max_new_tokens, batch_size=1)
    return [single(job) for job in jobs]


@pytest.mark.slow
def test_256_concurrent_distinct_images_each_get_their_own_answer(bundles, row_backend):
    """256 requests at once (prompts and caps mixed): every answer equals that image run alone, greedy."""
    from PIL import Image

    # The tiny random model's answers hardly depend on the image, so each request also gets its own
    # prompt and token cap (1..40): answers then differ in length and text, and a mix-up shows.
    pages = distinct_pages(256)
    prompts = ["OCR:", "Table Recognition:", 'OCR:{"total": ""}', "Chart Recognition:"]
    requests = [{"image": base64.b64encode(page).decode(), "prompt": prompts[i % 4], "max_new_tokens": 1 + i * 7 % 40}
                for i, page in enumerate(pages)]
    jobs = [Job(Image.open(io.BytesIO(page)).convert("RGB"), r["prompt"], max_new_tokens=r["max_new_tokens"])
            for page, r in zip(pages, requests)]
    expected = alone(bundles, jobs, max_new_tokens=40)
    assert len(set(expected)) > 80  # many distinct answers: a mix-up would show

    held = HeldRows(row_backend)
    app = create_app(held, model_name=MODEL, backend_name="transformers",
                     limits=Limits(max_new_tokens=40, max_batch=64, max_concurrency=256))
    with ServerThread(app) as server, ThreadPoolExecutor(256) as pool:
        answers = list(pool.map(lambda r: call(server.url, "/ocr", r, timeout=600), requests))
    assert [status for status, _ in answers] == [200] * 256
    assert [a["text"] for _, a in answers] == expected
    assert max(held.sizes) <= 64 and sum(held.sizes) == 256 and len(held.sizes) < 64


@pytest.mark.slow
def test_a_client_that_disconnects_mid_batch_does_not_break_the_others(bundles, row_backend, receipt_png):
    import socket

    from PIL import Image

    pages = distinct_pages(5)
    requests = [{"image": base64.b64encode(page).decode()} for page in pages]
    expected = alone(bundles, [Job(Image.open(io.BytesIO(p)).convert("RGB"), "OCR:") for p in pages])
    held = HeldRows(row_backend, held=2)
    app = create_app(held, model_name=MODEL, backend_name="transformers",
                     limits=Limits(max_new_tokens=MAX_NEW, gather_limit=60))
    with ServerThread(app) as server, ThreadPoolExecutor(6) as pool:
        blocker = pool.submit(call, server.url, "/ocr", {"image": b64(receipt_png)})
        assert held.entered[0].wait(60)
        others = [pool.submit(call, server.url, "/ocr", r) for r in requests]
        host, port = server.url.removeprefix("http://").split(":")
        leaver = socket.create_connection((host, int(port)), timeout=30)
        body = json.dumps({"image": b64(receipt_png)}).encode()
        leaver.sendall(b"POST /ocr HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: health(server.url)["in_flight"] == 7, "six requests queued behind the first batch")
        held.gates[0].set()
        assert held.entered[1].wait(60)
        assert held.sizes == [1, 6]  # the leaver is in the batch now running
        leaver.close()  # the client goes away mid-batch
        held.gates[1].set()
        assert blocker.result()[0] == 200
        assert [f.result() for f in others] == [(200, f.result()[1]) for f in others]
        assert [f.result()[1]["text"] for f in others] == expected
        wait_until(lambda: health(server.url)["in_flight"] == 0, "the server idle again")
        status, answer = call(server.url, "/ocr", requests[0])
        assert status == 200 and answer["text"] == expected[0]


@pytest.mark.slow
def test_a_short_request_is_answered_while_a_longer_one_in_its_batch_still_decodes(row_backend, receipt_png):
    held = HeldRows(row_backend, held=1)
    answered, release = threading.Event(), threading.Event()

    def hook(on_done, i, item, text):
        on_done(i, text)
        if item.cap == 1:  # the short request's row
            answered.set()
            assert release.wait(60)  # the batch stays open until the short answer has been received

    app = create_app(held, model_name=MODEL, backend_name="transformers",
                     limits=Limits(max_new_tokens=MAX_NEW, gather_limit=60))
    with ServerThread(app) as server, ThreadPoolExecutor(3) as pool:
        blocker = pool.submit(call, server.url, "/ocr", {"image": b64(receipt_png)})
        assert held.entered[0].wait(60)
        long = pool.submit(call, server.url, "/ocr", {"image": b64(receipt_png), "prompt": "chart"})
        short = pool.submit(call, server.url, "/ocr", {"image": b64(receipt_png), "max_new_tokens": 1})
        wait_until(lambda: health(server.url)["in_flight"] == 3, "both queued behind the first batch")
        held.on_done_hook = hook
        held.gates[0].set()
        status, answer = short.result(timeout=60)
        assert status == 200 and answer["text"] and answered.is_set()
        assert not long.done()  # its batch is still decoding
        release.set()
        assert long.result()[0] == 200 and blocker.result()[0] == 200
    assert held.sizes == [1, 2]


class FixedAnswerBackend:
    """Answers every prompt with the same text (here: KIE JSON cut off mid-way, as models do)."""

    def __init__(self, answer: str):
        self.answer = answer

    def __call__(self, job):
        return self.answer


def test_extract_strict_keeps_exactly_the_requested_keys():
    app = create_app(FixedAnswerBackend('{"total": "12.50", "store": "Migros", "date": "2024-'),
                     model_name="m", backend_name="test")
    with ServerThread(app) as server:
        status, answer = call(server.url, "/extract", {"image": tiny_png_b64(), "fields": "total,date,tax"})
        assert status == 200
        assert answer["fields"] == {"total": "12.50", "store": "Migros", "date": "2024-"}  # repaired, all keys
        status, answer = call(server.url, "/extract", {"image": tiny_png_b64(), "fields": "total,date,tax", "strict": True})
        assert status == 200
        assert answer["fields"] == {"total": "12.50", "date": "2024-", "tax": None}


# --- the genai-server proxy and the CLI -----------------------------------------------------------------


@pytest.mark.slow
def test_genai_server_proxy_answers_as_its_upstream(servers, receipt_png):
    """serve --backend genai-server in front of an OpenAI-compatible server (here: serve itself)."""
    from paddle_ocrvl_sft.predict import GenAIServerBackend

    upstream, _ = servers("paddle")
    proxy_backend = GenAIServerBackend(upstream + "/v1", timeout=60)
    assert proxy_backend.model == MODEL
    app = create_app(proxy_backend, model_name=proxy_backend.model, backend_name="genai-server")
    with ServerThread(app) as proxy:
        for path, body in (("/ocr", {"image": b64(receipt_png), "prompt": "chart"}),
                           ("/extract", {"image": b64(receipt_png), "fields": ["total"]})):
            assert call(proxy.url, path, body)[1]["text"] == call(upstream, path, body)[1]["text"]


def bound_port(proc: subprocess.Popen, timeout: float) -> tuple[int, list[str]]:
    """The loopback port a `serve` process reports on stderr, and the lines it printed until then."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if m := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
            return int(m.group(1)), lines
    raise AssertionError("".join(lines))


@pytest.mark.slow
def test_serve_cli_binds_loopback_and_stops_cleanly(bundles, tmp_path):
    hf = bundles[1]
    cmd = [sys.executable, "-m", "paddle_ocrvl_sft", "serve", "--model", str(hf), "--backend", "transformers",
           "--device", "cpu", "--port", "0", "--max-new-tokens", "4"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port, lines = bound_port(proc, 120)
        url = f"http://127.0.0.1:{port}"
        assert call(url, "/health")[1]["status"] in ("warming", "ok")  # the static cache's graphs first
        wait_until(lambda: call(url, "/health")[1]["status"] != "warming", "the warm-up")
        status, health = call(url, "/health")
        assert status == 200 and health == {"status": "ok", "model": MODEL, "backend": "transformers", "in_flight": 0}
        assert any("serving PaddleOCR-VL-0.9B (transformers backend)" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0


def test_serve_cli_refuses_a_missing_model(capsys):
    from paddle_ocrvl_sft import cli

    assert cli.main(["serve", "--backend", "transformers"]) == 2
    assert "--backend transformers needs --model DIR" in capsys.readouterr().err


# --- releases: a paddle bundle is served under its release's name ---------------------------------------


@pytest.mark.slow
def test_serve_cli_names_a_1_5_bundle_after_its_release(tmp_path):
    bundle = build_tiny_model(tmp_path / "b15", release="v1.5")
    cmd = [sys.executable, "-m", "paddle_ocrvl_sft", "serve", "--model", str(bundle), "--device", "cpu", "--port", "0",
           "--max-new-tokens", "4"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port, lines = bound_port(proc, 180)
        assert any("serving PaddleOCR-VL-1.5-0.9B (release v1.5, paddle backend)" in line for line in lines)
        status, models = call(f"http://127.0.0.1:{port}", "/v1/models")
        assert status == 200 and [m["id"] for m in models["data"]] == ["PaddleOCR-VL-1.5-0.9B"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0


def test_serve_cli_refuses_a_bundle_whose_files_disagree(tmp_path, capsys):
    from paddle_ocrvl_sft import cli

    bundle = build_tiny_model(tmp_path / "b15", release="v1.5")
    (bundle / "inference.yml").write_text("Global:\n  model_name: PaddleOCR-VL-0.9B\n")
    assert cli.main(["serve", "--model", str(bundle), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"error: {bundle}: its files name no single PaddleOCR-VL release" in err and "Traceback" not in err
