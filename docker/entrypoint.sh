#!/usr/bin/env bash
# Container entrypoint: every argument goes to the CLI (`docker run IMAGE plan ...`).
# `train` inside the container is real ERNIEKit: the image has the GPU build and ERNIEKit 1.4.
set -euo pipefail
exec python -m paddle_ocrvl_sft "$@"
