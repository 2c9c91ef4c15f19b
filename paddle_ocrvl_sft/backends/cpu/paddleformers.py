"""PaddleFormers 1.2 ``VL-SFT`` on paddle's CPU build: the triton import (CPU_TRAINING.md A.2).

Run as ``python -m paddle_ocrvl_sft.backends.cpu.paddleformers train CONFIG`` in the PaddleFormers
environment (`export`'s LoRA merge runs :mod:`paddle_ocrvl_sft.backends.cpu.paddleformers_export`).
The other CPU needs are keys (``plan --device cpu``) and a prepared copy of the model dir
(``backends/paddleformers.py`` ``prepare_model_dir``), not code patches.
"""

from __future__ import annotations

import sys
import types

from paddle_ocrvl_sft.backends.cpu import Patch, main


def _kernels_unavailable(owner, module_name, source):
    """``paddleformers.triton_kernels`` decorates kernels with ``@triton.jit`` at import, so without
    triton importing PaddleOCR-VL's modeling fails. In its place: the same two names, each
    reporting ``is_available() -> False``, so ``dispatch_to`` takes the plain Paddle path."""
    import paddleformers

    stub = types.ModuleType(module_name, "triton kernels are not available here (paddle-ocrvl-sft CPU patch)")

    def unavailable(*args, **kwargs):
        raise RuntimeError("triton kernels are not available on CPU")

    for name in ("apply_rotary_emb", "apply_rotary_pos_emb_vision"):
        kernel = types.FunctionType(unavailable.__code__, {}, name)
        kernel.is_available = lambda *args, **kwargs: False
        setattr(stub, name, kernel)
    stub.__all__ = ["apply_rotary_emb", "apply_rotary_pos_emb_vision"]
    sys.modules[module_name] = stub
    paddleformers.triton_kernels = stub


def patches() -> list[Patch]:
    """The triton stand-in, when triton is not installed. Its hash covers what it stands in for: every
    file of ``paddleformers.triton_kernels`` (the two kernels and their ``is_available``) and
    ``dispatch_to``, whose ``cond`` check sends a call to the plain Paddle path when it is False."""
    try:
        import triton  # noqa: F401 - installed: the real kernels import, no patch needed
    except ImportError:
        return [Patch("triton-kernels", "paddleformers.triton_kernels",
                      "3a28439ba41ded2199f38553def9cf1021425329390c188054ee64c82f6e1a72",
                      "NameError: name 'triton' is not defined (paddleformers/triton_kernels/rope_triton.py:48)",
                      apply=_kernels_unavailable, covers=("paddleformers.utils.tools:dispatch_to",))]
    return []


if __name__ == "__main__":
    if sys.argv[1:2] != ["train"]:
        sys.exit("usage: python -m paddle_ocrvl_sft.backends.cpu.paddleformers train CONFIG.yaml [key=value ...] "
                 "(the LoRA export: paddle_ocrvl_sft.backends.cpu.paddleformers_export)")
    sys.exit(main(patches, "paddleformers.cli.launcher:launch", sys.argv[1:]))
