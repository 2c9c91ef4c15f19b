"""``serve``: a fine-tuned PaddleOCR-VL as an HTTP API (FastAPI under uvicorn).

* :mod:`.app`: the routes (``/ocr``, ``/extract``, the OpenAI subset, health, metrics, playground).
* :mod:`.inputs`: what a request may carry (images as bytes/base64/data URLs, never paths or URLs).
* :mod:`.batcher`: one model worker; requests on their way are gathered into one batch, each answered
  as its row ends.
* :mod:`.metrics`: Prometheus counters and histograms.

The backends are :mod:`paddle_ocrvl_sft.predict`'s (paddle, transformers, genai-server).
"""
