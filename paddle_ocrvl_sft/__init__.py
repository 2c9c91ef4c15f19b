"""paddle-ocrvl-sft: from a folder of domain documents to a fine-tuned PaddleOCR-VL (0.9B, 1.5 or 1.6).

Every CLI command is a thin shell over functions in the stage modules
(``paddle_ocrvl_sft.data``, ``paddle_ocrvl_sft.plan``, ...), so everything is usable from Python.
Heavy libraries (paddle, paddlex, torch, transformers) are imported only inside the functions
that need them.
"""

__version__ = "0.1.0"


def data_dir(name: str):
    """The top-level ``configs/`` or ``patches/`` dir: the checkout's own in a clone or editable
    install, the copy packaged as ``paddle_ocrvl_sft/_<name>`` in a wheel (see setup.py)."""
    from pathlib import Path

    package = Path(__file__).resolve().parent
    checkout = package.parent / name
    return checkout if checkout.is_dir() else package / f"_{name}"
