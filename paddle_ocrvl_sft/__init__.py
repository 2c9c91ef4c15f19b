"""paddle-ocrvl-sft: from a folder of domain documents to a fine-tuned PaddleOCR-VL-0.9B.

Every CLI command is a thin shell over functions in the stage modules
(``paddle_ocrvl_sft.data``, ``paddle_ocrvl_sft.plan``, ...), so everything is usable from Python.
Heavy libraries (paddle, paddlex, torch, transformers) are imported only inside the functions
that need them.
"""

__version__ = "0.1.0"
