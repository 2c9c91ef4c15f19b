"""What a request may carry, checked before anything reaches the model.

Images come as bytes (a multipart upload), base64 or a ``data:`` URL. The server never opens a
server-side path and never fetches a URL named by a client: such a string is refused with a 4xx.
Every refusal is an :class:`ApiError` with an HTTP status and a message that says what to send.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS, query_for_fields
from paddle_ocrvl_sft.tokens import AspectRatioError, PixelBounds, smart_resize

URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://|^(?P<file>file):", re.I)
DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


class ApiError(Exception):
    """A refused request: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask of the server (``serve --help`` names the options)."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_new_tokens: int = 4096
    timeout: float = 300.0
    max_concurrency: int = 256  # requests admitted (queued or decoding); more get 503 + Retry-After
    max_batch: int = 64
    batch_wait: float = 0.02  # the gathering batcher waits this long for a straggler
    gather_limit: float = 0.5  # ... and at most this long for requests whose bodies are being read


def image_from_text(value: object, field: str, limits: Limits):
    """A base64 string or ``data:`` URL -> PIL image; paths and URLs are refused, never opened."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, f"{field}: expected the image as base64 or a data: URL (a string)")
    text = value.strip()
    match = DATA_URL.match(text)
    if match:
        if not match.group("b64"):
            raise ApiError(422, f"{field}: a data: URL must be base64 (data:image/png;base64,...)")
        payload = text[match.end():]
    elif url := URL.match(text):
        scheme = url.group("scheme") or url.group("file")
        raise ApiError(422, f"{field}: {scheme} URLs are not fetched or opened; send the image itself "
                            "(a multipart upload, base64 or a data: URL)")
    else:
        payload = text
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{field}: not base64 or a data: URL{_path_hint(text)}") from None
    return image_from_bytes(raw, field, limits, hint="" if match else _path_hint(text))


def _path_hint(text: str) -> str:
    if len(text) < 4096 and ("/" in text or "\\" in text or text.startswith("~")):
        return " (it looks like a file path: the server never opens files named by a client; send the bytes)"
    return ""


def image_from_bytes(raw: bytes, field: str, limits: Limits, hint: str = ""):
    """Decode image bytes with PIL after checking the pixel count from the header (no bomb decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise ApiError(422, f"{field}: empty")
    try:
        image = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise ApiError(413, f"{field}: too many pixels ({exc})") from None
        raise ApiError(415, f"{field}: not an image PIL can read{hint}") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise ApiError(413, f"{field}: {width}x{height} = {width * height} pixels, more than the "
                            f"server's limit of {limits.max_image_pixels} (--max-image-pixels)")
    try:
        smart_resize(height, width)
    except AspectRatioError as exc:
        raise ApiError(422, f"{field}: {width}x{height}: {exc}") from None
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data after a valid header
        raise ApiError(415, f"{field}: the image data is broken ({exc})") from None


def prompt_for_task(task: str | None) -> str:
    """``ocr``/``table``/``formula``/``chart``/... -> the built-in query; anything else is the raw prompt."""
    if task is None or not str(task).strip():
        return BUILTIN_PROMPTS["ocr"]
    return BUILTIN_PROMPTS.get(str(task).strip().lower(), str(task))


def kie_query(fields: object = None, query: object = None) -> dict:
    """A KIE query object from a field list (``["a", "b"]`` or ``"a,b"``) or a JSON skeleton."""
    if (fields is None) == (query is None):
        raise ApiError(422, "give either fields (a list of names or 'a,b') or query (a JSON object)")
    if fields is not None:
        names = fields.split(",") if isinstance(fields, str) else fields
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ApiError(422, "fields: expected a list of names or a comma-separated string")
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise ApiError(422, "fields: no field names given")
        return query_for_fields(names)
    if isinstance(query, str):
        try:
            query = json.loads(query)
        except json.JSONDecodeError as exc:
            raise ApiError(422, f"query: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(query, dict):
        raise ApiError(422, 'query: must be a JSON object, e.g. {"total": "", "items": []}')
    return query


def keep_requested(fields: dict | None, query: dict) -> dict | None:
    """``strict``: exactly the query's top-level keys (extra keys dropped, missing ones null)."""
    if fields is None:
        return None
    return {key: fields.get(key) for key in query}


def token_cap(value: object, field: str, limits: Limits) -> int | None:
    """A per-request new-token cap: an integer >= 1, clipped to the server's ``--max-new-tokens``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ApiError(422, f"{field}: expected an integer >= 1, got {value!r}")
    cap = int(value)
    if cap < 1:
        raise ApiError(422, f"{field}: must be >= 1, got {cap}")
    return min(cap, limits.max_new_tokens)


def pixel_bounds(kwargs: object, model_bounds: PixelBounds, limits: Limits = Limits()) -> PixelBounds | None:
    """``mm_processor_kwargs`` {min_pixels, max_pixels}, as PaddleOCR's pipeline sends them.

    A bound not given keeps the model's own (its preprocessor_config.json). A bound above the
    model's max_pixels or the server's --max-image-pixels is refused: the image is resized to
    within the bounds, so min_pixels = max_pixels = 10**10 would upscale a tiny upload into an
    image far larger than any the server accepts (memory, and a prompt of millions of tokens).
    """
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict):
        raise ApiError(422, "mm_processor_kwargs: expected an object with min_pixels/max_pixels")
    ceiling, named = min((model_bounds.max_pixels, "the model's max_pixels"),
                         (limits.max_image_pixels, "the server's --max-image-pixels"))
    values = {}
    for key in ("min_pixels", "max_pixels"):
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(422, f"mm_processor_kwargs.{key}: expected an integer >= 1, got {value!r}")
        if value > ceiling:
            raise ApiError(422, f"mm_processor_kwargs.{key}: {value} is above {named} ({ceiling}); "
                                f"send at most {ceiling}")
        values[key] = value
    if not values:
        return None
    try:
        return model_bounds.with_overrides(**values)
    except UserError as exc:  # PixelBounds' own check (min <= max)
        raise ApiError(422, f"mm_processor_kwargs: {exc}") from None
