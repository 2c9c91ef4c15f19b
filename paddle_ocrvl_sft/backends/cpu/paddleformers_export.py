"""``python -m paddle_ocrvl_sft.backends.cpu.paddleformers_export CONFIG``: PaddleFormers' own exporter
(``paddleformers-cli export``: the LoRA merge) run on the CPU, in the PaddleFormers environment.

`export` runs it (:func:`paddle_ocrvl_sft.backends.lora.merge`) and then verifies what it wrote.
Loading PaddleOCR-VL on a CPU needs the same triton stand-in as training
(:mod:`paddle_ocrvl_sft.backends.cpu.paddleformers`), hence the same patch machinery.
"""

from __future__ import annotations

import sys

from paddle_ocrvl_sft.backends.cpu import main
from paddle_ocrvl_sft.backends.cpu.paddleformers import patches

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m paddle_ocrvl_sft.backends.cpu.paddleformers_export CONFIG.yaml")
    sys.exit(main(patches, "paddleformers.cli.launcher:launch", ["export", sys.argv[1]]))
