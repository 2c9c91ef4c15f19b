"""The Try page: ``serve``'s own app (its routes, limits and playground page) for a model of the workdir.

One model is loaded at a time, through :func:`paddle_ocrvl_sft.predict.make_backend` as ``serve``
loads it, and its app (:func:`paddle_ocrvl_sft.serve.app.create_app`) answers under
``/try/<id>/``: the playground at ``/try/<id>/``, ``/try/<id>/ocr``, ``/try/<id>/extract``,
``/try/<id>/health``... The UI's own guard (API key, host, origin) stands in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError


@dataclass
class Loaded:
    model_dir: Path
    id: str
    app: object
    stack: contextlib.AsyncExitStack
    backend: str
    device: str | None
    max_new_tokens: int


def _restore(handlers: dict) -> None:
    """Paddle installs its own SIGTERM handler when it loads (it aborts with a C++ report): give the
    signals back to the server, so that stopping the UI stays a clean shutdown."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in handlers.items():
        if handler is not None:  # set again even if Python still names it: paddle replaced it below Python
            signal.signal(signum, handler)


def model_id(model_dir: Path) -> str:
    return hashlib.sha256(str(model_dir).encode()).hexdigest()[:12]


class Playgrounds:
    """The loaded model's serve app, and the ASGI app mounted at ``/try`` that routes to it."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.current: Loaded | None = None
        self._lock = asyncio.Lock()

    def info(self) -> dict | None:
        c = self.current
        return None if c is None else {"model": str(c.model_dir), "id": c.id, "url": f"try/{c.id}/",
                                       "backend": c.backend, "device": c.device, "max_new_tokens": c.max_new_tokens}

    async def load(self, model_dir: Path, *, backend: str = "paddle", max_new_tokens: int = 1024) -> dict:
        from paddle_ocrvl_sft.bundle import model_name_of
        from paddle_ocrvl_sft.predict import make_backend
        from paddle_ocrvl_sft.serve.app import create_app
        from paddle_ocrvl_sft.serve.inputs import Limits
        from paddle_ocrvl_sft.tokens import PixelBounds

        if backend not in ("paddle", "transformers"):
            raise UserError(f"backend {backend}: the Try page loads paddle or transformers models")
        async with self._lock:
            c = self.current
            if c and (c.model_dir, c.backend, c.max_new_tokens) == (model_dir, backend, max_new_tokens):
                return self.info()
            await self._unload()
            handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                model = await asyncio.to_thread(make_backend, backend, model_dir=str(model_dir), device=self.device,
                                                max_new_tokens=max_new_tokens)
            finally:
                _restore(handlers)
            app = create_app(model, model_name=model_name_of(model_dir), backend_name=backend,
                             limits=Limits(max_new_tokens=max_new_tokens), model_bounds=PixelBounds.from_model_dir(model_dir))
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(app.router.lifespan_context(app))  # serve's batcher starts here
            self.current = Loaded(model_dir, model_id(model_dir), app, stack, backend, self.device, max_new_tokens)
            return self.info()

    async def _unload(self) -> None:
        if self.current is not None:
            stack, self.current = self.current.stack, None
            await stack.aclose()

    async def close(self) -> None:
        async with self._lock:
            await self._unload()

    async def __call__(self, scope, receive, send):
        """``/try/<id>/...`` -> the loaded model's app with ``/try/<id>`` as its root path."""
        from starlette.responses import JSONResponse

        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if scope["path"].startswith(root) else scope["path"]
        wanted, _, rest = path.lstrip("/").partition("/")
        current = self.current
        if current is None or wanted != current.id:
            response = JSONResponse({"error": {"message": "this model is not loaded: choose it on the Try page",
                                               "type": "invalid_request_error", "code": 404}}, status_code=404)
            return await response(scope, receive, send)
        if not rest and not path.endswith("/"):  # the playground's relative URLs need the trailing slash
            from starlette.responses import RedirectResponse

            return await RedirectResponse(f"{root}/{wanted}/")(scope, receive, send)
        child = {**scope, "root_path": f"{root}/{wanted}"}
        await current.app(child, receive, send)
