"""The HTTP API over one backend: OCR text, KIE JSON, the OpenAI subset PaddleOCR's pipeline speaks.

Routes (docs/serve.md has examples):

* ``POST /ocr``: image + a task (``ocr``/``table``/``formula``/``chart``/...) or a raw prompt -> text.
* ``POST /extract``: image + ``fields`` or a JSON ``query`` -> the parsed object (json_repair);
  the prompt is :func:`paddle_ocrvl_sft.prompts.kie_prompt`, the rendering the training data used.
* ``POST /v1/chat/completions``, ``GET /v1/models``: what PaddleX's genai client and the ``openai``
  client send (paddlex/inference/models/doc_vlm/predictor.py: one user message, an ``image_url``
  data URL then the text query, ``max_completion_tokens``, ``mm_processor_kwargs`` min/max pixels).
* ``GET /health`` (never needs the key), ``GET /metrics`` (Prometheus), ``GET /`` (the playground),
  ``GET /docs`` (OpenAPI).

Every refusal is JSON ``{"error": {"message", "type", "code"}}`` with a 4xx status; a client
mistake is never a 500. Model calls go through one :class:`MicroBatcher` worker.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from paddle_ocrvl_sft import __version__
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.loop_guard import finish_of
from paddle_ocrvl_sft.predict import Job, parse_kie
from paddle_ocrvl_sft.prompts import kie_prompt
from paddle_ocrvl_sft.serve.batcher import MicroBatcher, Unavailable
from paddle_ocrvl_sft.serve.inputs import (
    ApiError,
    Limits,
    image_from_bytes,
    image_from_text,
    keep_requested,
    kie_query,
    pixel_bounds,
    prompt_for_task,
    token_cap,
)
from paddle_ocrvl_sft.serve.metrics import Metrics
from paddle_ocrvl_sft.tokens import PixelBounds

STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/health", "/", "/docs", "/openapi.json")  # no data, no model: the rest needs the key
ROUTES = ("/ocr", "/extract", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
MODEL_ROUTES = ("/ocr", "/extract", "/v1/chat/completions")  # POSTs that queue a model call
ARRIVAL = "paddle_ocrvl_sft.arrival"  # scope key: the request's place in the batcher's arrivals
log = logging.getLogger("paddle_ocrvl_sft.serve")


# --- request and response bodies (also the OpenAPI schema at /docs) ------------------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int | None = Field(None, ge=1, description="cap on generated tokens (clipped to the server's)")


class OcrOptions(_Options):
    prompt: str | None = Field(None, description="ocr, table, formula, chart, spotting, seal, or the exact prompt text",
                               examples=["table"])


class ExtractOptions(_Options):
    fields: list[str] | str | None = Field(None, description='field names: ["total", "date"] or "total,date"')
    query: dict[str, Any] | str | None = Field(None, description='a JSON skeleton: {"total": "", "items": []}')
    strict: bool = Field(False, description="return exactly the requested top-level keys (missing ones null)")


class _WithImage(BaseModel):
    image: str = Field(description="the image as base64 or a data: URL (paths and http URLs are refused)")


class OcrRequest(OcrOptions, _WithImage):
    pass


class ExtractRequest(ExtractOptions, _WithImage):
    pass


class OcrResponse(BaseModel):
    text: str
    prompt: str
    model: str
    latency_ms: float


class ExtractResponse(OcrResponse):
    fields: dict[str, Any] | None = Field(description="the answer parsed with json_repair; null if not a JSON object")


class ImageUrl(BaseModel):
    url: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    image_url: ImageUrl | str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """The fields this server reads; others an OpenAI client sends are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message]
    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    n: int | None = None
    stream: bool | None = None
    mm_processor_kwargs: dict[str, Any] | None = None


def _body_schema(options: type[BaseModel], json_body: type[BaseModel]) -> dict:
    """The OpenAPI body of a route that takes a multipart upload or JSON."""
    form = {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}, **options.model_json_schema()["properties"]}}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": json_body.model_json_schema()},
    }}}


# --- the app -------------------------------------------------------------------------------------


def create_app(backend, *, model_name: str, backend_name: str, limits: Limits = Limits(),
               api_key: str | None = None, model_bounds: PixelBounds = PixelBounds()) -> FastAPI:
    """The API over ``backend`` (a predict backend: ``batch(jobs)`` or one job per call)."""
    metrics = Metrics()
    state: dict[str, Any] = {"batcher": None, "in_flight": 0, "batch_seconds": 1.0}

    def observe_batch(size: int, seconds: float) -> None:
        state["batch_seconds"] = seconds
        metrics.observe_batch(size, seconds)

    async def lifespan(app):
        state["batcher"] = MicroBatcher(backend, max_batch=limits.max_batch, max_wait=limits.batch_wait,
                                        gather_limit=limits.gather_limit, on_batch=observe_batch)
        try:
            yield
        finally:
            await asyncio.to_thread(state["batcher"].close, 60)

    app = FastAPI(title="paddle-ocrvl-sft serve", version=__version__, lifespan=lifespan,
                  description=f"PaddleOCR-VL ({model_name}, {backend_name} backend): OCR text, KIE JSON "
                              "and the OpenAI chat.completions subset PaddleOCR's pipeline uses.")
    app.add_middleware(_Guard, api_key=api_key, max_body=limits.max_body_bytes, metrics=metrics, state=state,
                       max_concurrency=limits.max_concurrency)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, describe_validation(exc.errors()))

    async def run_job(job: Job, request: Request) -> tuple[str, float]:
        """Queue ``job`` for the model; (text, milliseconds) or an ApiError.

        The request was admitted (and counted in flight) by the guard before its body was read.
        """
        batcher: MicroBatcher = state["batcher"]
        start = time.perf_counter()
        try:
            future = batcher.submit(job, request.scope.get(ARRIVAL))
        except RuntimeError as exc:
            raise ApiError(503, f"the model is not available: {exc}", "server_error") from None
        try:
            text = await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout)
        except Unavailable as exc:  # the worker stopped before running it (a failed warm-up, shutting down)
            raise ApiError(503, f"the model is not available: {exc}", "server_error") from None
        except asyncio.TimeoutError:  # not the builtin one before Python 3.11
            raise ApiError(408, f"no answer within {limits.timeout:g} s (the server's --timeout); "
                                "send a smaller image or a lower max_new_tokens", "timeout") from None
        except UserError as exc:  # genai-server: the upstream server failed or is unreachable
            raise ApiError(503, f"upstream: {exc}", "server_error") from None
        except Exception as exc:  # the model call itself broke: not the client's mistake
            log.exception("model call failed")
            raise ApiError(500, f"the model call failed: {type(exc).__name__}: {exc}", "server_error") from None
        return text, round((time.perf_counter() - start) * 1000, 1)

    @app.get("/health", tags=["server"])
    async def health():
        """``ok`` (200) once the model is ready; ``warming`` (503) while the decoding graphs are made,
        ``down`` (503) if the model worker stopped."""
        batcher = state["batcher"]
        status = "down" if batcher is None or not batcher.alive else batcher.status
        body = {"status": status, "model": model_name, "backend": backend_name, "in_flight": state["in_flight"]}
        if batcher is not None and batcher.error:
            body["error"] = batcher.error
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", tags=["server"], response_class=Response)
    async def prometheus():
        body, content_type = metrics.text()
        return Response(body, media_type=content_type)

    @app.post("/ocr", tags=["ocr"], response_model=OcrResponse, openapi_extra=_body_schema(OcrOptions, OcrRequest))
    async def ocr(request: Request):
        """Text for an image: a built-in task (OCR, table, formula, chart...) or any prompt."""
        image, options = await read_request(request, OcrOptions, limits)
        prompt = prompt_for_task(options.prompt)
        cap = token_cap(options.max_new_tokens, "max_new_tokens", limits)
        text, ms = await run_job(Job(image, prompt, max_new_tokens=cap), request)
        return {"text": text, "prompt": prompt, "model": model_name, "latency_ms": ms}

    @app.post("/extract", tags=["ocr"], response_model=ExtractResponse, openapi_extra=_body_schema(ExtractOptions, ExtractRequest))
    async def extract(request: Request):
        """Key information as JSON: the fine-tuned KIE prompt ``OCR:{"field": ""}``, answer parsed."""
        image, options = await read_request(request, ExtractOptions, limits)
        query = kie_query(options.fields, options.query)
        prompt = kie_prompt(query)
        cap = token_cap(options.max_new_tokens, "max_new_tokens", limits)
        text, ms = await run_job(Job(image, prompt, max_new_tokens=cap), request)
        fields = parse_kie(text)
        if options.strict:
            fields = keep_requested(fields, query)
        return {"fields": fields, "text": text, "prompt": prompt, "model": model_name, "latency_ms": ms}

    @app.get("/v1/models", tags=["openai"])
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "paddle-ocrvl-sft"}]}

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: Request):
        """One user message: an image (data URL) and the text query, as PaddleOCR's pipeline sends.

        Decoding is greedy (temperature, top_p, repetition_penalty are accepted and ignored);
        ``max_completion_tokens`` (or ``max_tokens``) caps the answer; ``mm_processor_kwargs``
        min/max pixels set the image resize bounds for this request.
        """
        body = await read_json(request)
        try:
            chat = ChatRequest.model_validate(body)
        except ValidationError as exc:
            raise ApiError(422, describe_validation(exc.errors())) from None
        image, prompt = await asyncio.to_thread(chat_input, chat, limits)
        cap = token_cap(chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens,
                        "max_completion_tokens", limits)
        job = Job(image, prompt, max_new_tokens=cap, pixels=pixel_bounds(chat.mm_processor_kwargs, model_bounds, limits))
        text, _ = await run_job(job, request)
        # OpenAI's two reasons: "length" for an answer that hit its cap (the backend's Answer.finish says),
        # "stop" otherwise (the loop guard's cut included: the answer ended, on purpose)
        finish = "length" if finish_of(text) == "length" else "stop"
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                                                  "message": {"role": "assistant", "content": text}}]}

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html")

    return app


# --- reading requests ----------------------------------------------------------------------------


async def read_json(request: Request) -> Any:
    import json

    content_type = request.headers.get("content-type", "application/json")
    if not content_type.startswith("application/json"):
        raise ApiError(415, f"Content-Type {content_type}: send application/json")
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None


async def read_request(request: Request, options: type[BaseModel], limits: Limits):
    """(image, options) from a multipart upload (field ``image``) or a JSON body.

    Images are decoded on a worker thread: the event loop keeps accepting requests meanwhile.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=16, max_part_size=limits.max_body_bytes)
        except ApiError:
            raise
        except Exception as exc:  # python-multipart's parse errors
            raise ApiError(400, f"the multipart body cannot be parsed ({exc})") from None
        values = {key: value for key, value in form.multi_items()}
        upload = values.pop("image", None)
        if upload is None:
            raise ApiError(422, "image: missing (a multipart file field named 'image')")
        if isinstance(upload, str):
            image = await asyncio.to_thread(image_from_text, upload, "image", limits)
        else:
            raw = await upload.read()
            image = await asyncio.to_thread(image_from_bytes, raw, f"image ({upload.filename or 'upload'})", limits)
        values = {key: value for key, value in values.items() if isinstance(value, str)}
    else:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(422, "the body must be a JSON object with an 'image' field")
        values = dict(body)
        if "image" not in values:
            raise ApiError(422, "image: missing (base64 or a data: URL)")
        image = await asyncio.to_thread(image_from_text, values.pop("image"), "image", limits)
    try:
        return image, options.model_validate(values)
    except ValidationError as exc:
        raise ApiError(422, describe_validation(exc.errors())) from None


def chat_input(chat: ChatRequest, limits: Limits) -> tuple[Any, str]:
    """The image and text query of a one-turn chat request."""
    if chat.stream:
        raise ApiError(422, "stream: streaming is not supported; send stream=false")
    if chat.n not in (None, 1):
        raise ApiError(422, f"n: only one choice per request (got n={chat.n})")
    if len(chat.messages) != 1 or chat.messages[0].role != "user":
        roles = [m.role for m in chat.messages]
        raise ApiError(422, f"messages: expected one user message (an image and a text query), got roles {roles}")
    content = chat.messages[0].content
    parts = [ContentPart(type="text", text=content)] if isinstance(content, str) else content or []
    images = [p for p in parts if p.type == "image_url"]
    if len(images) != 1:
        raise ApiError(422, f"messages[0].content: expected exactly one image_url part, got {len(images)}")
    url = images[0].image_url.url if isinstance(images[0].image_url, ImageUrl) else images[0].image_url
    image = image_from_text(url, "messages[0].content.image_url.url", limits)
    prompt = "".join(p.text or "" for p in parts if p.type == "text")
    if not prompt:
        raise ApiError(422, "messages[0].content: no text part (the query, e.g. 'OCR:')")
    return image, prompt


def describe_validation(errors: list[dict]) -> str:
    """Pydantic's errors as one line: ``field.path: message; ...``."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",)) or "body"
        message = "unknown field" if error.get("type") == "extra_forbidden" else error.get("msg", "invalid")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def error_response(status: int, message: str, kind: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = kind or ("authentication_error" if status == 401 else "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


# --- the outer guard: API key, body size, metrics ------------------------------------------------


class _Guard:
    """ASGI middleware run before any body is read: the API key, the body size, admission, and metrics.

    A model request (POST to a route in MODEL_ROUTES) is admitted here, before its body is read:
    past ``max_concurrency`` admitted requests it gets a 503 with ``Retry-After`` at once;
    otherwise it is counted in flight and announced to the batcher, which waits for it while it
    gathers a batch, until its body is read and its job queued (or it fails).
    """

    def __init__(self, app, *, api_key: str | None, max_body: int, metrics: Metrics, state: dict,
                 max_concurrency: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.metrics = metrics
        self.state = state
        self.max_concurrency = max_concurrency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = [500]
        start = time.perf_counter()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        admitted, arrival = False, None
        try:
            refusal = self._refusal(scope)
            if refusal is None and scope["method"] == "POST" and path in MODEL_ROUTES:
                refusal = self._admit()
                if refusal is None:
                    admitted = True
                    self.state["in_flight"] += 1
                    self.metrics.in_flight.inc()
                    batcher = self.state["batcher"]
                    if batcher is not None:
                        arrival = scope[ARRIVAL] = batcher.arriving()
            if refusal is not None:
                return await refusal(scope, receive, send_status)
            return await self.app(scope, self._bounded(receive), send_status)
        finally:
            if arrival is not None:
                arrival.done()
            if admitted:
                self.state["in_flight"] -= 1
                self.metrics.in_flight.dec()
            route = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
            self.metrics.observe_request(route, status[0], time.perf_counter() - start)

    def _admit(self) -> JSONResponse | None:
        """A 503 with ``Retry-After`` (about one batch's time) when the queue is full."""
        in_flight = self.state["in_flight"]
        if in_flight < self.max_concurrency:
            return None
        wait = max(1, min(60, math.ceil(self.state["batch_seconds"])))
        return error_response(503, f"busy: {in_flight} requests queued or decoding (the server's "
                                   f"--max-concurrency is {self.max_concurrency}); retry after {wait} s",
                              "server_error", headers={"Retry-After": str(wait)})

    def _refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.api_key and path not in PUBLIC_PATHS and not path.startswith("/static/"):
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.api_key):
                why = "wrong API key" if given else "this server needs an API key"
                return error_response(401, f"{why}: send the header 'Authorization: Bearer KEY'")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "Content-Length is not a number")
            if int(length) > self.max_body:
                return error_response(413, f"the body is {int(length)} bytes, more than the server's limit of "
                                           f"{self.max_body} (--max-body-mb)")
        return None

    def _bounded(self, receive):
        """``receive`` that refuses a body (chunked, no Content-Length) once it passes the limit."""
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise ApiError(413, f"the body is more than the server's limit of {self.max_body} bytes (--max-body-mb)")
            return message

        return bounded


# --- running -------------------------------------------------------------------------------------


class ServerThread:
    """The app under uvicorn on a background thread (tests and benchmarks); ``url`` once started.

    Entering waits until ``/health`` says ``ok`` (the model warmed up) unless ``ready=False``.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, ready: bool = True, start_timeout: float = 300):
        import socket

        import uvicorn

        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        bound_port = self.socket.getsockname()[1]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.ready = ready
        self.start_timeout = start_timeout

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        if self.ready:
            self.wait_ready(deadline)
        return self

    def wait_ready(self, deadline: float) -> None:
        """Poll ``/health`` until it answers ``ok``; an error if it says ``down`` or time runs out."""
        import json
        import urllib.error
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=10) as resp:
                    body = json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read() or b"{}")
            if body.get("status") == "ok":
                return
            if body.get("status") == "down" or time.monotonic() > deadline:
                raise RuntimeError(f"the server is not ready: {body}")
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(60)
        self.socket.close()
