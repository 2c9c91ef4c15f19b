"""predict's genai-server backend at scale: requests in flight, retries, resume — against our own ``serve``
(the tiny model over loopback), behind a proxy that drops connections or answers 503 for a while."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from paddle_ocrvl_sft import cli
from paddle_ocrvl_sft.predict import GenAIServerBackend, Job
from paddle_ocrvl_sft.testing import build_tiny_model, receipt_image

MODEL = "PaddleOCR-VL-0.9B"
MAX_NEW = 8


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """``serve`` with the tiny model (transformers backend, static cache) on 127.0.0.1: (url, backend)."""
    from paddle_ocrvl_sft.export import export
    from paddle_ocrvl_sft.predict import TransformersBackend
    from paddle_ocrvl_sft.serve.app import ServerThread, create_app
    from paddle_ocrvl_sft.serve.inputs import Limits

    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base", "base")
    export(base, base, root / "hf", fmt="hf", verify=False)
    backend = TransformersBackend(root / "hf", device="cpu", max_new_tokens=MAX_NEW, batch_size=8)
    app = create_app(backend, model_name=MODEL, backend_name="transformers", limits=Limits(max_new_tokens=MAX_NEW))
    with ServerThread(app) as server:
        yield server.url, root / "hf"


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pages")
    for i in range(12):
        receipt_image({"n": f"{i:02d}", "total": f"{i}.25"}, width=160 + 32 * (i % 3)).save(folder / f"page{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def expected(upstream, pages) -> dict[str, str]:
    """Each page's answer from a separate backend, one page at a time."""
    from PIL import Image

    from paddle_ocrvl_sft.predict import TransformersBackend

    alone = TransformersBackend(upstream[1], device="cpu", max_new_tokens=MAX_NEW, batch_size=1)
    answers = {}
    for path in sorted(pages.iterdir()):
        with Image.open(path) as image:
            answers[str(path)] = alone(Job(image.convert("RGB"), "OCR:"))
    return answers


class FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to ``upstream``; the first ``drop`` POSTs lose their connection, the next ``busy``
    get 503 (Retry-After: 0). Counts what it saw."""

    upstream = ""
    drop = busy = 0
    lock = threading.Lock()
    posts = dropped = refused = 0

    def do_GET(self):
        self._forward(None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        with cls.lock:
            cls.posts += 1
            action = "drop" if cls.dropped < cls.drop else "busy" if cls.refused < cls.busy else "pass"
            cls.dropped += action == "drop"
            cls.refused += action == "busy"
        if action == "drop":
            self.close_connection = True
            self.connection.close()  # no status line at all: the client sees the connection go
            return
        if action == "busy":
            self._send(503, b'{"error": {"message": "busy"}}', {"Retry-After": "0"})
            return
        self._forward(body)

    def _forward(self, body):
        request = urllib.request.Request(type(self).upstream + self.path, data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                self._send(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            self._send(exc.code, exc.read())

    def _send(self, status, raw, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(upstream):
    """(url, handler class): a flaky proxy in front of ``serve``; set ``drop``/``busy`` on the class."""
    handler = type("Proxy", (FlakyProxy,), {"upstream": upstream[0], "posts": 0, "dropped": 0, "refused": 0,
                                            "drop": 0, "busy": 0, "lock": threading.Lock()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("trouble", ["drop", "busy"])
def test_predict_through_a_flaky_server_retries_and_loses_nothing(proxy, pages, expected, tmp_path, trouble, capsys):
    url, handler = proxy
    setattr(handler, trouble, 5)  # the first five POSTs: connection dropped / 503 for a while
    out = tmp_path / "pred.jsonl"
    # --retries 5: one request may meet all five troubles (its retries can come before the others'),
    # so fewer retries would make the outcome depend on thread timing
    assert cli.main(["predict", str(pages), "--backend", "genai-server", "--server-url", url + "/v1",
                     "--concurrency", "4", "--retries", "5", "--max-new-tokens", str(MAX_NEW), "-o", str(out),
                     "--no-progress"]) == 0, capsys.readouterr().err
    records = read_jsonl(out)
    assert [r["image"] for r in records] == sorted(expected)  # in input order
    assert [r["text"] for r in records] == [expected[r["image"]] for r in records]
    assert getattr(handler, "dropped" if trouble == "drop" else "refused") == 5
    assert handler.posts == len(expected) + 5  # each trouble cost one request again, nothing more
    assert not out.with_name("pred.jsonl.partial").exists()


@pytest.mark.slow
def test_an_interrupted_predict_resumes_without_asking_again_for_finished_pages(proxy, pages, expected, tmp_path,
                                                                               monkeypatch, capsys):
    url, handler = proxy
    out = tmp_path / "pred.jsonl"
    argv = ["predict", str(pages), "--backend", "genai-server", "--server-url", url + "/v1", "--concurrency", "3",
            "--max-new-tokens", str(MAX_NEW), "-o", str(out), "--no-progress"]
    call = GenAIServerBackend.__call__

    def interrupted(self, job):  # Ctrl-C while page05 is being asked for
        if Path(job.image).name == "page05.png":
            raise KeyboardInterrupt
        return call(self, job)

    monkeypatch.setattr(GenAIServerBackend, "__call__", interrupted)
    assert cli.main(argv) == 130
    partial = out.with_name("pred.jsonl.partial")
    finished = read_jsonl(partial)
    assert [Path(r["image"]).name for r in finished] == [f"page{i:02d}.png" for i in range(5)]
    assert not out.exists()

    monkeypatch.setattr(GenAIServerBackend, "__call__", call)
    handler.posts = 0
    assert cli.main(argv) == 0
    assert "resuming" in capsys.readouterr().err
    assert handler.posts == len(expected) - 5  # the five finished pages were not asked for again
    records = read_jsonl(out)
    assert [r["text"] for r in records] == [expected[str(p)] for p in sorted(pages.iterdir())]
    assert not partial.exists()


class Barrier(BaseHTTPRequestHandler):
    """Answers only when ``parties`` requests are inside at once (a client with fewer in flight fails)."""

    barrier: threading.Barrier

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        try:
            self.barrier.wait()
            raw, status = json.dumps({"choices": [{"message": {"content": "ok"}}]}).encode(), 200
        except threading.BrokenBarrierError:
            raw, status = b'{"error": {"message": "not enough requests in flight"}}', 400
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


def test_concurrency_keeps_that_many_requests_in_flight(tmp_path):
    image = tmp_path / "r.png"
    receipt_image({"n": "1"}).save(image)
    handler = type("B", (Barrier,), {"barrier": threading.Barrier(4, timeout=30)})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        client = GenAIServerBackend(f"http://127.0.0.1:{httpd.server_address[1]}/v1", model="m", concurrency=4,
                                    retries=0)
        assert list(client.imap([Job(str(image), "OCR:")] * 8)) == ["ok"] * 8
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_a_refused_connection_is_retried_then_reported():
    import socket

    from paddle_ocrvl_sft.errors import UserError

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = GenAIServerBackend(f"http://127.0.0.1:{port}/v1", model="m", retries=2, backoff=0.0)
    with pytest.raises(UserError, match=r"--server-url http://127\.0\.0\.1:\d+/v1/models: .*\(after 3 tries\)"):
        client._request("/models")
    assert client.retried == 2
