"""A stand-in for ``erniekit train`` — NOT ERNIEKit — for CPU tests and the demo.

``python -m paddle_ocrvl_sft.standin_erniekit train CONFIG [k=v ...]`` reads the same config,
prints log lines in ERNIEKit's format (FACTS "Logs": one per step, then the metrics line and
``***** train metrics *****``) and writes ``output_dir`` in ERNIEKit's output layout with
``checkpoint-N`` dirs every ``save_steps`` — random tiny weights, nothing is trained.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import yaml

from paddle_ocrvl_sft.testing import build_tiny_model


def _log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(f"[{stamp}] [    INFO] - {message}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "train":
        print("usage: standin_erniekit train CONFIG [key=value ...]", file=sys.stderr)
        return 2
    config = yaml.safe_load(Path(argv[1]).read_text(encoding="utf-8"))
    config.update(dict(arg.split("=", 1) for arg in argv[2:]))
    print("[stand-in] this is paddle_ocrvl_sft.standin_erniekit, not ERNIEKit: no training happens", file=sys.stderr)
    steps = int(config["max_steps"])
    save = int(config.get("save_steps", steps))
    lr, warmup = float(config["learning_rate"]), int(config.get("warmup_steps", 0))
    for step in range(1, steps + 1):
        rate = lr * min(1.0, step / max(1, warmup))
        _log(f"loss: {2.5 / step ** 0.5:.4f}, loss_cur_dp: {2.5 / step ** 0.5:.4f}, learning_rate: {rate:.6e}, "
             f"global_step: {step}, mem_allocated_gb: 0.1, global_runtime: {0.01 * step:.2f}, "
             f"tokens_per_sec_per_card: 0.0, progress_or_epoch: {step / steps:.6f}, data_id: {step}, src_id: 0, data_type: 0")
    checkpoints = tuple(range(save, steps + 1, save)) or (steps,)
    build_tiny_model(config["output_dir"], "erniekit_output", checkpoints=checkpoints)
    _log(f"train_loss: {2.5 / steps ** 0.5:.4f}, train_runtime: {0.01 * steps:.2f}, train_samples_per_second: 0.0, "
         f"train_steps_per_second: 0.0, progress_or_epoch: 1.0")
    _log("***** train metrics *****")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
