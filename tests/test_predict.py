"""predict: prompts reach the model verbatim (paddle backend, genai-server backend); KIE parsed."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from paddle_ocrvl_sft import cli
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.predict import Job, collect_jobs, parse_kie, resolve_prompt, to_record
from paddle_ocrvl_sft.prompts import kie_prompt
from paddle_ocrvl_sft.testing import build_tiny_model, receipt_image
from paddle_ocrvl_sft.tokens import PixelBounds, TextTokenCounter, image_tokens, sample_tokens

FIELDS = {"total": "12.50", "date": "2024-01-02"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny base-layout model: it has model.safetensors + chat template, so PaddleX loads it as is."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "base", "base")


@pytest.fixture(scope="module")
def base15(tmp_path_factory) -> Path:
    """The same tiny model with the PaddleOCR-VL-1.5 files (template, image processor, inference.yml)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny15") / "base", "base", release="v1.5")


@pytest.fixture
def receipt(tmp_path) -> Path:
    path = tmp_path / "receipt.png"
    receipt_image(FIELDS).save(path)
    return path


def erniekit_line(image: str, prompt: str, answer: str) -> str:
    return json.dumps({"image_info": [{"matched_text_index": 0, "image_url": image}],
                       "text_info": [{"text": prompt, "tag": "mask"}, {"text": answer, "tag": "no_mask"}]},
                      ensure_ascii=False)


# --- prompts, inputs, parsing (fast) --------------------------------------------------------------


def test_prompt_options():
    assert resolve_prompt() is None
    assert resolve_prompt(prompt="table") == "Table Recognition:"
    assert resolve_prompt(prompt="Read the stamp:") == "Read the stamp:"
    assert resolve_prompt(fields="total, date") == 'OCR:{"total": "", "date": ""}'
    assert resolve_prompt(query='{"商品": [], "total": ""}') == 'OCR:{"商品": [], "total": ""}'
    assert resolve_prompt(fields="total") == kie_prompt({"total": ""})  # the data stage's rendering
    with pytest.raises(UsageError, match="--prompt and --fields"):
        resolve_prompt(prompt="ocr", fields="a")
    with pytest.raises(UsageError, match="--query: not valid JSON"):
        resolve_prompt(query="{total}")
    with pytest.raises(UsageError, match="must be a JSON object"):
        resolve_prompt(query='["total"]')
    with pytest.raises(UsageError, match="--fields"):
        resolve_prompt(fields=" , ")


def test_inputs_images_folders_and_erniekit_jsonl(tmp_path, receipt):
    (tmp_path / "imgs").mkdir()
    for name in ("b.png", "a.jpg"):
        receipt_image({"n": name}).save(tmp_path / "imgs" / name)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    data = tmp_path / "data" / "val.jsonl"
    data.parent.mkdir()
    data.write_text(erniekit_line("../receipt.png", 'OCR:{"total": ""}', '{"total": "12.50"}') + "\n", encoding="utf-8")

    jobs = collect_jobs([receipt, tmp_path / "imgs", data])
    assert [Path(j.image).name for j in jobs] == ["receipt.png", "a.jpg", "b.png", "receipt.png"]
    assert [j.prompt for j in jobs] == ["OCR:", "OCR:", "OCR:", 'OCR:{"total": ""}']
    assert jobs[3].where == f"{data}:1" and jobs[3].reference == '{"total": "12.50"}'
    assert Path(jobs[3].image).resolve() == receipt.resolve()  # relative to the JSONL's dir, as ERNIEKit does
    assert collect_jobs([data], "Table Recognition:")[0].prompt == "Table Recognition:"


def test_bad_inputs_name_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(erniekit_line("missing.png", "OCR:", "x") + "\n{broken\n")
    with pytest.raises(UserError, match=r"d.jsonl:1: field image_info\[0\].image_url: .*missing.png not found"):
        collect_jobs([data])
    data.write_text('{"text_info": []}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: not an ERNIEKit sample"):
        collect_jobs([data])
    data.write_text("{broken\n")
    with pytest.raises(UserError, match=r"d.jsonl:1: invalid JSON"):
        collect_jobs([data])
    with pytest.raises(UserError, match="no such image, folder or dataset file"):
        collect_jobs([tmp_path / "nope.png"])
    with pytest.raises(UserError, match="no images"):
        collect_jobs([tmp_path])


def test_kie_answers_are_repaired_and_the_raw_text_kept():
    assert parse_kie('{"total": "12.50", "date": "2024-01-02"}') == FIELDS
    assert parse_kie('{"total": "12.50", "date": "2024-') == {"total": "12.50", "date": "2024-"}  # cut off
    assert parse_kie("just words") is None
    job = Job("r.png", 'OCR:{"total": ""}')
    assert to_record(job, '```json\n{"total": "12.50"}\n```') == {
        "image": "r.png", "prompt": 'OCR:{"total": ""}', "text": '```json\n{"total": "12.50"}\n```',
        "fields": {"total": "12.50"}}
    assert "fields" not in to_record(Job("r.png", "OCR:"), "TOTAL 12.50")


# --- paddle backend: the real PaddleX predictor -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("release", ["v1", "v1.5"])
def test_custom_kie_prompt_reaches_the_model_verbatim_paddle(base, base15, receipt, tmp_path, monkeypatch, capsys, release):
    """Spy on the text PaddleX's processor hands its tokenizer (the real predictor code path), for
    v1 and for 1.5 (its template's marker, its pixel bounds, loaded as PaddleOCR-VL-1.5-0.9B)."""
    from paddlex.inference.models.common.tokenizer import LlamaTokenizer

    from paddle_ocrvl_sft import releases

    marker = releases.get(release).assistant_marker
    base = base15 if release == "v1.5" else base

    seen = []
    original = LlamaTokenizer.__call__

    def spy(self, text, *args, **kwargs):
        out = original(self, text, *args, **kwargs)
        seen.append((text, [int(i) for i in out["input_ids"][0]]))
        return out

    monkeypatch.setattr(LlamaTokenizer, "__call__", spy)
    query = '{"total": "", "商户名称": ""}'
    out = tmp_path / "pred.jsonl"
    argv = ["predict", str(receipt), "--model", str(base), "--query", query, "--device", "cpu",
            "--max-new-tokens", "6", "-o", str(out), "--no-progress"]
    assert cli.main(argv) == 0

    prompt = 'OCR:{"total": "", "商户名称": ""}'
    width, height = receipt_image(FIELDS).size
    n = image_tokens(height, width, PixelBounds.from_model_dir(base))
    (text, ids), = [s for s in seen if isinstance(s[0], list)]
    assert text == [f"<|begin_of_sentence|>User: <|IMAGE_START|>{'<|IMAGE_PLACEHOLDER|>' * n}<|IMAGE_END|>"
                    f"{prompt}{marker}"]
    assert ids.count(100295) == n and ids[0] == 100273  # real ids; image tokens as tokens.py counts them
    # The whole input as tokens.py counts a sample, less the answer's </s> (the input stops after
    # the assistant marker): tokens.py counts texts one by one, PaddleX tokenizes the joined string.
    assert len(ids) == sample_tokens([n], [(prompt, "")], TextTokenCounter(base, marker)) - 1

    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["prompt"] == prompt and record["image"] == str(receipt)
    assert isinstance(record["text"], str) and "fields" in record  # random model: any text, parsed or None
    assert "wrote 1 predictions" in capsys.readouterr().err

    assert cli.main(argv) == 1  # OUT exists: refused before the model is loaded
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_an_unreadable_image_is_an_error_line_and_the_others_are_kept_paddle(base, tmp_path, capsys, batch_size):
    folder = tmp_path / "imgs"
    folder.mkdir()
    receipt_image({"n": "1"}).save(folder / "a.png")
    (folder / "b.png").write_text("not an image, despite the name")
    receipt_image({"n": "3"}).save(folder / "c.png")
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", str(folder), "--model", str(base), "--device", "cpu", "--max-new-tokens", "2",
                     "-o", str(out), "--no-progress", "--batch-size", batch_size]) == 1

    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.png", "c.png"]
    good, bad = records[0::2], records[1]
    assert all(isinstance(r["text"], str) and "error" not in r for r in good)
    assert bad == {"image": str(folder / "b.png"), "prompt": "OCR:", "error": "not an image file PIL can read"}
    err = capsys.readouterr().err
    assert f"error: {folder / 'b.png'}: not an image file PIL can read\n" in err
    assert "wrote 2 predictions and 1 error lines" in err and "error: 1 of 3 images failed" in err
    # Not "Traceback" not in err: PaddleX's logger, set up in an earlier test, may report pytest's
    # closed capture stream with one. The PIL error itself must not escape.
    assert "UnidentifiedImageError" not in err


class FakeBatchBackend:
    """Upper-cases the prompt; a batch holding a job whose image is "bad" fails as a whole."""

    def __init__(self):
        self.calls = []

    def __call__(self, job):
        self.calls.append([job.image])
        if job.image == "bad":
            raise ValueError("cannot read bad")
        return job.prompt.upper()

    def batch(self, jobs):
        self.calls.append([j.image for j in jobs])
        if any(j.image == "bad" for j in jobs):
            raise ValueError("batch failed")
        return [j.prompt.upper() for j in jobs]


def test_run_batches_and_retries_a_failed_batch_one_by_one(capsys):
    from paddle_ocrvl_sft.predict import run

    jobs = [Job(name, f"p{name}") for name in ("a", "b", "bad", "c", "d")]
    backend = FakeBatchBackend()
    records = list(run(jobs, backend, progress=False, batch_size=2))
    assert [r["image"] for r in records] == ["a", "b", "bad", "c", "d"]
    assert [r.get("text") for r in records] == ["PA", "PB", None, "PC", "PD"]
    assert records[2]["error"] == "ValueError: cannot read bad"
    assert backend.calls == [["a", "b"], ["bad", "c"], ["bad"], ["c"], ["d"]]
    assert "error: bad: ValueError: cannot read bad" in capsys.readouterr().err
    backend.calls.clear()
    assert [r["text"] for r in run(jobs[:2], backend, progress=False)] == ["PA", "PB"]
    assert backend.calls == [["a"], ["b"]]  # batch_size 1: one job per call


def test_a_bundle_whose_files_disagree_is_refused_before_paddlex_loads_it(base15, receipt, tmp_path, capsys):
    """A 1.5 bundle that names the v1 model (what export wrote before it knew releases): refused with
    what each file says; --release cannot make PaddleX load it under another name than inference.yml's."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(base15, bundle)
    (bundle / "inference.yml").write_text("Global:\n  model_name: PaddleOCR-VL-0.9B\n")
    argv = ["predict", str(receipt), "--model", str(bundle), "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: {bundle}: its files name no single PaddleOCR-VL release" in err
    assert "'\\nAssistant:\\n'" in err and "model_name PaddleOCR-VL-0.9B" in err and "Traceback" not in err
    assert cli.main([*argv, "--release", "v1.5"]) == 1
    err = capsys.readouterr().err
    assert "model_name PaddleOCR-VL-0.9B, not PaddleOCR-VL-1.5-0.9B (--release v1.5)" in err
    assert "export RUN_DIR --base BASE --release v1.5" in err
    assert cli.main([*argv, "--release", "v1.5", "--model-name", "PaddleOCR-VL-0.9B"]) == 2
    assert "give one" in capsys.readouterr().err
    assert cli.main([*argv, "--release", "v1.5", "--backend", "transformers"]) == 2
    assert "--backend transformers has none" in capsys.readouterr().err


def test_unexported_dir_is_explained(tmp_path, capsys):
    run = build_tiny_model(tmp_path / "run", "erniekit_output", checkpoints=())
    image = tmp_path / "r.png"
    receipt_image(FIELDS).save(image)
    assert cli.main(["predict", str(image), "--model", str(run), "--model-name", "PaddleOCR-VL-0.9B",
                     "--device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"--model {run}: missing inference.yml, model.safetensors, chat_template.jinja" in err
    assert "export RUN_DIR --base BASE_DIR" in err and "Traceback" not in err


# --- genai-server backend: a fake OpenAI endpoint on 127.0.0.1 ------------------------------------------


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list = []
    answer = '{"total": "12.50", "date": "2024-01-02"'  # truncated on purpose: json_repair mends it

    def do_GET(self):
        self.requests.append(("GET", self.path, None))
        self._send({"object": "list", "data": [{"id": "PaddleOCR-VL-0.9B", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": self.answer}}]})

    def _send(self, obj):
        raw = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeOpenAI.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(60, httpd.shutdown)  # bounded even if a test hangs
    stopper.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        stopper.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_genai_server_backend_sends_image_and_prompt_verbatim(server, receipt, tmp_path):
    data = tmp_path / "val.jsonl"
    prompt = 'OCR:{"total": "", "date": ""}'
    data.write_text(erniekit_line("receipt.png", prompt, json.dumps(FIELDS)) + "\n", encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", str(data), "--backend", "genai-server", "--server-url", server,
                     "--max-new-tokens", "64", "--timeout", "10", "-o", str(out), "--no-progress"]) == 0

    (get, post) = FakeOpenAI.requests
    assert get[:2] == ("GET", "/v1/models")
    method, path, body = post
    assert (method, path, body["model"], body["temperature"], body["max_completion_tokens"]) == (
        "POST", "/v1/chat/completions", "PaddleOCR-VL-0.9B", 0, 64)
    (message,) = body["messages"]
    image_part, text_part = message["content"]
    assert text_part == {"type": "text", "text": prompt}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == receipt.read_bytes()

    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["text"] == FakeOpenAI.answer  # raw text kept
    assert record["fields"] == FIELDS
    assert record["reference"] == json.dumps(FIELDS) and record["source"] == f"{data}:1"


def test_genai_server_model_name_can_be_given(server, receipt, capsys):
    assert cli.main(["predict", str(receipt), "--backend", "genai-server", "--server-url", server,
                     "--server-model", "my-ft", "--prompt", "chart", "--no-progress"]) == 0
    assert [r[0] for r in FakeOpenAI.requests] == ["POST"]  # no GET /models needed
    assert FakeOpenAI.requests[0][2]["model"] == "my-ft"
    record = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "Chart Recognition:" and "fields" not in record


def test_a_non_image_is_an_error_line_and_the_others_are_kept_genai_server(server, receipt, tmp_path, capsys):
    data = tmp_path / "val.jsonl"
    (tmp_path / "notes.png").write_bytes(b"%PDF-1.4 not a png")
    data.write_text("".join(erniekit_line(name, "OCR:", "x") + "\n" for name in ("receipt.png", "notes.png", "receipt.png")))
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", str(data), "--backend", "genai-server", "--server-url", server,
                     "-o", str(out), "--no-progress"]) == 1
    assert [r[0] for r in FakeOpenAI.requests] == ["GET", "POST", "POST"]  # the bad one was never sent

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("text") for r in records] == [FakeOpenAI.answer, None, FakeOpenAI.answer]
    assert records[1] == {"image": str(tmp_path / "notes.png"), "prompt": "OCR:",
                          "error": "not an image file PIL can read", "source": f"{data}:2"}
    err = capsys.readouterr().err
    assert f"error: {data}:2: {tmp_path / 'notes.png'}: not an image file PIL can read" in err
    assert "error: 1 of 3 images failed" in err and "Traceback" not in err


@pytest.mark.parametrize("stop_repeats", [[], ["--stop-repeats", "4"]])
def test_an_answer_without_text_is_an_error_line_not_the_text_none(server, receipt, tmp_path, monkeypatch, capsys,
                                                                   stop_repeats):
    """``"content": null`` (a refusal, a tool call) is that image's error, not the answer "None"
    (nor a TypeError in the loop guard): an error line is visible, and retried on a resumed run."""
    monkeypatch.setattr(FakeOpenAI, "answer", None)
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", str(receipt), "--backend", "genai-server", "--server-url", server, *stop_repeats,
                     "-o", str(out), "--no-progress"]) == 1
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "text" not in record
    assert record["error"] == f"--server-url {server}/chat/completions: the answer has no text (message content null, " \
                              "finish_reason null)"
    assert "Traceback" not in capsys.readouterr().err


def test_retries_below_zero_are_a_usage_error_of_predict_and_eval(receipt, capsys):
    for command in (["predict", str(receipt)], ["eval", "--data", "val.jsonl"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--backend", "genai-server", "--server-url", "http://127.0.0.1:9/v1", "--retries", "-1"])
        assert exit_info.value.code == 2
        assert "argument --retries: must be >= 0, got -1" in capsys.readouterr().err


def test_transformers_batch_closes_the_images_it_opened_when_one_fails_to_open(receipt, tmp_path, monkeypatch):
    from PIL import UnidentifiedImageError

    from paddle_ocrvl_sft import predict as P

    (tmp_path / "notes.png").write_bytes(b"%PDF-1.4 not a png")
    opened = []

    def open_image(image):
        opened.append(real_open(image))
        return opened[-1]

    real_open = P.open_image
    monkeypatch.setattr(P, "open_image", open_image)
    backend = P.TransformersBackend.__new__(P.TransformersBackend)  # it fails before any model is used
    with pytest.raises(UnidentifiedImageError):
        backend.batch([Job(str(receipt), "OCR:"), Job(str(tmp_path / "notes.png"), "OCR:")])
    assert len(opened) == 1 and opened[0].fp is None  # the receipt, opened before the bad one: closed


@pytest.mark.parametrize("option, value, why", [
    ("--timeout", "-1", "must be a finite number > 0, got -1"),
    ("--timeout", "0", "must be a finite number > 0, got 0"),
    ("--timeout", "soon", "expected a number of seconds"),
    ("--max-new-tokens", "0", "must be >= 1, got 0"),
])
def test_bad_timeout_and_token_cap_are_usage_errors(receipt, capsys, option, value, why):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", str(receipt), "--backend", "genai-server", "--server-url", "http://127.0.0.1:9/v1",
                  option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {why}" in err and "Traceback" not in err


def test_unreachable_server_is_a_clear_error(receipt, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert cli.main(["predict", str(receipt), "--backend", "genai-server", "--server-url",
                     f"http://127.0.0.1:{port}/v1", "--timeout", "5", "--retries", "0", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --server-url http://127.0.0.1:{port}/v1/models:") and "Traceback" not in err


def test_backend_needs_its_target(receipt, capsys):
    assert cli.main(["predict", str(receipt), "--no-progress"]) == 2
    assert "--backend paddle needs --model DIR" in capsys.readouterr().err
    assert cli.main(["predict", str(receipt), "--backend", "genai-server"]) == 2
    assert "needs --server-url" in capsys.readouterr().err


# --- transformers backend: PyTorch on the hf export ------------------------------------------------


@pytest.fixture(scope="module")
def hf_bundle(base, tmp_path_factory) -> Path:
    """The tiny base exported as an hf bundle (same weights as ``base``)."""
    from paddle_ocrvl_sft.export import export

    out = tmp_path_factory.mktemp("hf") / "bundle"
    export(base, base, out, fmt="hf", verify=False)
    return out


@pytest.fixture(scope="module")
def receipts(tmp_path_factory) -> list[Path]:
    """Receipts of different sizes (so their prompts have different lengths)."""
    root = tmp_path_factory.mktemp("receipts")
    paths = []
    for i, width in enumerate([320, 900, 500, 320, 700]):
        paths.append(root / f"r{i}.png")
        receipt_image({"total": f"{i}.50", "date": f"2024-01-0{i + 1}"}, width=width).save(paths[-1])
    return paths


PROMPTS = ["OCR:", 'OCR:{"total": "", "date": ""}', "Table Recognition:", "OCR:", "Formula Recognition:"]


@pytest.fixture(scope="module")
def hf_backend(hf_bundle):
    from paddle_ocrvl_sft.predict import TransformersBackend

    return TransformersBackend(hf_bundle, device="cpu", batch_size=2, max_new_tokens=12)


@pytest.mark.slow
def test_transformers_prompt_is_the_training_layout(hf_backend, hf_bundle, receipt):
    """<|IMAGE_START|>/<|IMAGE_END|> around the image, as ERNIEKit trains and PaddleX asks (transformers'
    chat template call would otherwise put the bare placeholder there)."""
    from PIL import Image

    from paddle_ocrvl_sft.predict import hf_inputs

    prompt = 'OCR:{"total": "", "商户名称": ""}'
    with Image.open(receipt) as image:
        inputs = hf_inputs(hf_backend.processor, [image], [prompt])
        n = image_tokens(image.height, image.width, PixelBounds.from_model_dir(hf_bundle))
    ids = inputs["input_ids"][0].tolist()
    text = hf_backend.processor.tokenizer.decode(ids)
    assert text == (f"<|begin_of_sentence|>User: <|IMAGE_START|>{'<|IMAGE_PLACEHOLDER|>' * n}<|IMAGE_END|>"
                    f"{prompt}\nAssistant: ")
    assert ids.count(100295) == n and ids[0] == 100273
    assert len(ids) == sample_tokens([n], [(prompt, "")], TextTokenCounter(hf_bundle)) - 1  # as PaddleX's


@pytest.mark.slow
def test_transformers_batches_sorted_by_length_and_answers_as_one_at_a_time(hf_backend, receipts):
    from PIL import Image

    from paddle_ocrvl_sft.predict import hf_inputs

    jobs = [Job(str(path), prompt) for path, prompt in zip(receipts, PROMPTS)]
    images = [Image.open(path) for path in receipts]
    lengths = [hf_inputs(hf_backend.processor, [image], [job.prompt])["input_ids"].shape[1]
               for job, image in zip(jobs, images)]
    order = [i for batch in hf_backend._plan(jobs, images) for i in batch]
    assert sorted(order) == list(range(5)) and len(set(lengths)) > 2
    assert [lengths[i] for i in order] == sorted(lengths)  # shortest prompts first, in batches of 2

    batched = hf_backend.batch(jobs)
    assert batched == [hf_backend(job) for job in jobs]  # left padding changes nothing
    assert all(batched)

    capped = hf_backend.batch([Job(jobs[0].image, jobs[0].prompt, max_new_tokens=3), jobs[1]])
    assert batched[0].startswith(capped[0]) and len(capped[0]) < len(batched[0])
    assert capped[1] == batched[1]  # a short cap in the same batch does not cut the others


@pytest.mark.slow
def test_transformers_says_what_paddlex_says(hf_backend, base, receipts):
    """Same weights, same greedy decoding, same prompt layout: the same text as PaddleX."""
    from paddle_ocrvl_sft.predict import PaddleBackend

    jobs = [Job(str(path), prompt) for path, prompt in zip(receipts, PROMPTS)][:3]
    paddle = PaddleBackend(base, device="cpu", max_new_tokens=12)
    assert hf_backend.batch(jobs) == paddle.batch(jobs)


@pytest.mark.slow
def test_transformers_runs_the_vision_tower_once_per_batch(hf_backend, receipt, monkeypatch):
    """The KV cache is on: the released generation_config.json says use_cache false, under which
    every new token re-runs the whole sequence, vision tower included."""
    visual = hf_backend.model.model.visual
    calls = []
    original = visual.forward
    monkeypatch.setattr(visual, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    hf_backend.batch([Job(str(receipt), "OCR:", max_new_tokens=8)] * 2)
    assert len(calls) == 1


@pytest.mark.slow
def test_predict_cli_transformers_keeps_order_and_reports_bad_images(hf_bundle, hf_backend, receipts, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, path in enumerate(receipts):
        (folder / f"{i}.png").write_bytes(path.read_bytes())
    (folder / "5.png").write_text("not an image")
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", str(folder), "--backend", "transformers", "--model", str(hf_bundle), "--device", "cpu",
                     "--batch-size", "2", "--max-new-tokens", "12", "-o", str(out), "--no-progress"]) == 1
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [Path(r["image"]).name for r in records] == [f"{i}.png" for i in range(6)]
    assert [r["text"] for r in records[:5]] == hf_backend.batch([Job(str(p), "OCR:") for p in receipts])
    assert records[5]["error"] == "not an image file PIL can read"
    assert "error: 1 of 6 images failed" in capsys.readouterr().err


def test_transformers_refuses_a_bundle_that_is_not_hf(base, receipt, capsys):
    assert cli.main(["predict", str(receipt), "--backend", "transformers", "--model", str(base), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"--model {base}: not an hf bundle (config.json has no text_config with tie_word_embeddings false)" in err
    assert "export RUN_DIR --base BASE --format hf" in err and "Traceback" not in err


@pytest.mark.slow
def test_transformers_static_kv_cache_answers_as_the_dynamic_one(hf_bundle, hf_backend, receipts):
    from paddle_ocrvl_sft.predict import TransformersBackend

    static = TransformersBackend(hf_bundle, device="cpu", batch_size=2, max_new_tokens=12, kv_cache="static")
    jobs = [Job(str(path), prompt) for path, prompt in zip(receipts, PROMPTS)][:3]
    assert static.batch(jobs) == hf_backend.batch(jobs)
