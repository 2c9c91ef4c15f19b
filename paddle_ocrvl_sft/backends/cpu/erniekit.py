"""ERNIEKit v1.4 (develop@41ab1c5) ``OCR-VL-SFT`` on paddle's CPU build: six patches (CPU_TRAINING.md B).

Run as ``python -m paddle_ocrvl_sft.backends.cpu.erniekit train CONFIG`` in the ERNIEKit environment.
Each patch is the smallest change that gets past one thing paddle 3.3.1 CPU lacks; on a GPU none
is needed and none is applied.
"""

from __future__ import annotations

import sys

from paddle_ocrvl_sft.backends.cpu import Patch, main


def _fp32_arguments(owner, attr, source):
    """bf16 is forced by __post_init__; CPU has no bf16 conv2d/matmul/softmax kernels: train in fp32."""
    original = getattr(owner, attr)

    def __post_init__(self):
        original(self)
        self.bf16 = self.fp16 = False

    setattr(owner, attr, __post_init__)


def _unfused_rms_norm(owner, attr, source):
    """The config hard-codes fuse_rms_norm = True after __init__ (config.json cannot override it)."""
    original = getattr(owner, attr)

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.fuse_rms_norm = False

    setattr(owner, attr, __init__)


def _causal_mask_length(owner, attr, source):
    """Without flash attention and without a mask, the training mask is built one key too long."""
    original = getattr(owner, attr)

    def _update_causal_mask(self, attention_mask, input_tensor, past_key_values, output_attentions=False):
        mask = original(self, attention_mask, input_tensor, past_key_values, output_attentions)
        if mask is not None and attention_mask is None:
            past = past_key_values[0][0].shape[1] if past_key_values is not None and past_key_values[0] is not None else 0
            mask = mask[..., : past + input_tensor.shape[1]]
        return mask

    setattr(owner, attr, _update_causal_mask)


def _cross_entropy(owner, attr, source):
    """The same mean token loss over labels != -100, by logsumexp and a gather: paddle 3.3.1's CPU
    ``F.nll_loss`` corrupts the heap with ignore_index labels, and its CPU log_softmax over the
    103,424-word vocabulary takes seconds a row."""
    import paddle

    def paddle_cross_entropy_by_hand(shift_logits, shift_labels):
        valid = shift_labels != -100
        logits, labels = shift_logits[valid], shift_labels[valid].astype("int64")
        picked = paddle.take_along_axis(logits, labels.unsqueeze(-1), axis=-1).squeeze(-1)
        return (paddle.logsumexp(logits, axis=-1) - picked).mean()

    setattr(owner, attr, paddle_cross_entropy_by_hand)


# PretrainingTrainer._maybe_log_save_evaluate reads GPU memory counters (CPUPlace has no device id)
# and calls a callback it defines only on GPU: on CPU, report 0 GB and no extra metrics.
_GPU_MEMORY_STATS = '''            current_device = framework._current_expected_place_()
            device_id = current_device.get_device_id()
            current_memory_allocated = core.device_memory_stat_current_value(
                "Allocated", device_id
            )
            current_memory_reserved = core.device_memory_stat_current_value(
                "Reserved", device_id
            )
            max_memory_allocated = core.device_memory_stat_peak_value(
                "Allocated", device_id
            )
            max_memory_reserved = core.device_memory_stat_peak_value(
                "Reserved", device_id
            )
'''
_GPU_ONLY_CALLBACK = '''            if get_env_device() == "gpu":
                info_callback = global_training_logs.dict(use_async=True)
'''


_TRAINER_LOG = "erniekit.train.ocr_vl_sft.pretraining_trainer:PretrainingTrainer._maybe_log_save_evaluate"
_TRAINER_LOG_SHA = "95f673851cef71a1d183706586943f1fb8dc6c0c47a03eb525b695a4da8b0cd2"


def patches() -> list[Patch]:
    """The six patches, each with the upstream error it works around (CPU_TRAINING.md B.1-B.6)."""
    return [
        Patch("fp32", "erniekit.hparams.finetuning_args:FinetuningArguments.__post_init__",
              "faa6e7d207b771168e23702ff64b13db05285940e071bd7f64512fbea20424ef",
              "the bfloat16 kernel of `conv2d` is not registered (no bf16 on CPU)", apply=_fp32_arguments),
        Patch("rms-norm", "ernie.configuration_paddleocr_vl:PaddleOCRVLConfig.__init__",
              "501b723a417b728d03108182a7aed10d26f97cc10160e5b7a777ebef7d413c4b",
              "`fused_rms_norm_ext` is not registered", apply=_unfused_rms_norm),
        Patch("causal-mask", "ernie.modeling_paddleocr_vl_ernie:Ernie4_5Model._update_causal_mask",
              "8a27174081f77891274cfb4ab65e685f474a6f5205b9402c251360dbcf2b7efb",
              "Broadcast dimension mismatch [1, 2, N, N] and [1, 1, N, N+1]", apply=_causal_mask_length),
        Patch("cross-entropy", "ernie.modeling_paddleocr_vl:paddle_cross_entropy_by_hand",
              "fadd1346d0a58dfb76690c7fe63b005ac0be6e41d532888a64abe8229fad85ac",
              "Fatal glibc error: malloc assertion failure in F.nll_loss (exit 134)", apply=_cross_entropy),
        Patch("log-memory", _TRAINER_LOG, _TRAINER_LOG_SHA, "'CPUPlace' object has no attribute 'get_device_id'",
              edits=((_GPU_MEMORY_STATS, "            current_memory_allocated = current_memory_reserved = 0\n"
                                         "            max_memory_allocated = max_memory_reserved = 0\n"),)),
        Patch("log-callback", _TRAINER_LOG, _TRAINER_LOG_SHA, "UnboundLocalError: cannot access local variable 'info_callback'",
              edits=((_GPU_ONLY_CALLBACK, "            info_callback = lambda: ({}, {})  # noqa: E731\n"),)),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] != ["train"]:
        sys.exit("usage: python -m paddle_ocrvl_sft.backends.cpu.erniekit train CONFIG.yaml [key=value ...]")
    sys.exit(main(patches, "erniekit.launcher:launch", sys.argv[1:]))
