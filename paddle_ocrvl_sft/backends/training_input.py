"""One training sample as the trainer itself turns it into model input, built in the trainer's environment.

``python -m paddle_ocrvl_sft.backends.training_input BACKEND CONFIG --data FILE --index N --out OUT.json``
runs with the trainer's Python and the plan's PYTHONPATH (the prompt agreement check,
:mod:`paddle_ocrvl_sft.agreement`, starts it). It parses CONFIG with the trainer's own argument
parser (a PaddleFormers ``custom_register_path`` template module is loaded there, as in training),
builds the tokenizer, image processor and data pipeline as the trainer's workflow does, runs record
N of FILE through the trainer's own per-sample code and writes::

    {"trainer": "PaddleFormers 1.2.0", "ids": [...], "loss": [indices of the tokens that are training targets],
     "notes": [...]}

Nothing is trained and no weights are loaded. The two trainers lay labels out differently
(PaddleFormers shifts them: ``labels[i]`` is the target of position i, token i+1; ERNIEKit keeps
them aligned with the ids and its model shifts): both are turned into token indices here, and a
label that is not the token it claims to train is an error, not a guess.

Only the standard library is imported at module level: this runs where the trainer is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from paddle_ocrvl_sft.backends import erniekit_marker_hook  # stdlib only, like this module

IGNORE = -100  # both trainers' ignore_index


def loss_tokens(ids: list[int], labels: list[int], shifted: bool) -> list[int]:
    """Indices of the tokens trained on; checks every label is the token it names."""
    offset = 1 if shifted else 0
    found = [i + offset for i, label in enumerate(labels) if label != IGNORE]
    wrong = [t for t in found if t >= len(ids) or labels[t - offset] != ids[t]]
    if wrong:
        raise RuntimeError(f"labels do not match the token ids at {wrong[:5]} (label layout shifted={shifted}): "
                           "the trainer's label layout is not the one this check was written for")
    return found


# --- PaddleFormers >= 1.2 (VL-SFT) ---------------------------------------------------------------


def paddleformers_input(config: dict, data: str, index: int) -> dict:
    """Record ``index`` of the messages file ``data`` through PaddleFormers' SFT dataset code.

    The tokenizer, processor, template and dataset are built as ``run_sft``
    (paddleformers/cli/train/sft/workflow.py, 1.2.0) builds them, then the dataset's own
    ``_process_sft_sequence`` encodes the record. PaddleFormers' image augmentation, when the
    template's plugin has one, is random per pass: the sample is measured without it and the
    note says what it does.
    """
    import paddleformers
    from paddleformers.cli.hparams.parser import get_train_args
    from paddleformers.datasets.data_utils import get_worker_sliced_iterator
    from paddleformers.datasets.loader import create_dataset
    from paddleformers.datasets.template.template import get_template_and_fix_tokenizer
    from paddleformers.transformers import AutoProcessor, AutoTokenizer

    model_args, data_args, _, _, training_args = get_train_args(dict(config))
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, use_fast=data_args.processor_use_fast)
    dataset_config = {
        "tokenizer": tokenizer, "processor": processor, "max_seq_len": data_args.max_seq_len,
        "random_seed": training_args.seed, "num_replicas": 1, "rank": 0,
        "num_samples_each_epoch": data_args.num_samples_each_epoch, "random_shuffle": False,  # record N in file order
        "greedy_intokens": data_args.greedy_intokens, "packing": data_args.packing, "mix_strategy": data_args.mix_strategy,
        "encode_one_turn": data_args.encode_one_turn, "use_template": data_args.use_template,
        "is_pretraining": "pt" in model_args.stage.lower(), "truncate_packing": data_args.truncate_packing,
        "stage": model_args.stage, "template_backend": data_args.template_backend,
        "split_multi_turn": data_args.split_multi_turn, "dataset_type": data_args.dataset_type,
        "dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(getattr(training_args, "compute_type", None), "float32"),
        "dataset_num_proc": 1, "binpacking": data_args.binpacking, "packing_interval": data_args.packing_interval,
        "packed_idx_cache_dir": data_args.packed_idx_cache_dir, "dataloader_num_workers": 0,
        "template": data_args.template, "tool_format": None, "default_system": None,
        "truncation_strategy": data_args.truncation_strategy, "skip_warmup": data_args.skip_warmup,
    }
    notes = [f"template {data_args.template!r} (template_backend {data_args.template_backend})"]
    template = get_template_and_fix_tokenizer(dataset_config) if data_args.template_backend == "custom" else None
    dataset_config["template_instance"] = template
    plugin = getattr(template, "mm_plugin", None)
    augmentation = getattr(plugin, "image_augmentation", None)
    steps = list(getattr(augmentation, "transforms", None) or [])
    if steps:
        notes.append(f"{type(plugin).__name__} augments images at random ({len(steps)} steps: "
                     + ", ".join(_describe_step(s) for s in steps) + "): measured without it")
        plugin.image_augmentation = _unchanged
    else:
        notes.append(f"{type(plugin).__name__}: no image augmentation")
    dataset = create_dataset(task_group=data, task_group_prob="1.0", sub_dataset_type="messages", is_valid=True,
                             **dataset_config)
    records = get_worker_sliced_iterator(dataset.mix_datasets)
    for _ in range(index):
        next(records)
    example = next(records)
    sequence = dataset._process_sft_sequence(example, 1)
    if sequence is None:
        raise RuntimeError(f"PaddleFormers skips record {index} of {data} (its log above says why)")
    ids, labels = [int(i) for i in sequence.token_ids], [int(i) for i in sequence.labels]
    if steps:
        counts = augmented_token_counts(plugin, augmentation, processor.image_processor, example["images"][0])
        plain = ids.count(tokenizer.convert_tokens_to_ids(plugin.image_token))
        other = [c for c in counts if c != plain]
        notes.append(f"{len(other)} of {len(counts)} draws of this augmentation (seeded) gave the sample another image token "
                     f"count than the {plain} inference sends" + (f" ({min(other)}..{max(other)})" if other else ""))
    return {"trainer": f"PaddleFormers {paddleformers.__version__}", "ids": ids, "loss": loss_tokens(ids, labels, shifted=True),
            "notes": notes, "prompt": example["messages"][0]["content"].replace("<image>", ""),
            "image": str(example["images"][0])}


def _unchanged(image):
    return image


def augmented_token_counts(plugin, augmentation, image_processor, image, draws: int = 50) -> list[int]:
    """Image token counts of ``draws`` passes of the plugin's own pre-resize + augmentation, sized by
    the image processor's own smart resize (Python's ``random`` seeded, then restored)."""
    import random

    state = random.getstate()
    random.seed(0)
    plugin.image_augmentation = augmentation
    try:
        factor = (image_processor.patch_size * image_processor.merge_size) ** 2
        counts = []
        for _ in range(draws):
            (pixels,) = plugin._regularize_images([image], image_max_pixels=image_processor.max_pixels,
                                                  image_min_pixels=image_processor.min_pixels,
                                                  image_processor=image_processor)["images"]
            (height, width), _ = image_processor.get_smarted_resize(pixels.height, pixels.width)
            counts.append(height * width // factor)
        return counts
    finally:
        plugin.image_augmentation = _unchanged
        random.setstate(state)


def _describe_step(step) -> str:
    inner = getattr(step, "transforms", None)
    text = " ".join(type(t).__name__ for t in inner) if inner else type(step).__name__
    p = getattr(step, "p", None)
    return f"{text} p={p:g}" if isinstance(p, (int, float)) else text


# --- ERNIEKit v1.4 (OCR-VL-SFT) ------------------------------------------------------------------


def erniekit_input(config: dict, data: str, index: int) -> dict:
    """Record ``index`` of the ERNIEKit JSONL ``data`` through ERNIEKit's OCR-VL-SFT reader.

    Tokenizer, image processor and ``End2EndProcessor`` are built as ``run_ocr_vl_sft``
    (erniekit/train/ocr_vl_sft/workflow.py) builds them; the record is read by the reader's
    ``ExampleSet`` (relative image paths, as in training) and turned into features by
    ``SFTMultimodalDatasetJson.example_to_feature_stage3``, the function the training reader calls.
    """
    import types

    from data_processor.image_preprocessor.image_preprocessor_siglip import SiglipImageProcessor
    from data_processor.steps.end2end_processing import End2EndProcessor
    from ernie.dataset.vl_sft_reader.vl_sft_dataset_json import ExampleSet, SFTMultimodalDatasetJson
    from ernie.tokenizer import Ernie4_5_Tokenizer
    from erniekit.hparams.parser import get_train_args

    model_args, data_args, preprocess_args, _, finetuning_args = get_train_args(dict(config))
    # what run_ocr_vl_sft sets before building the processor ("hacking data processor")
    preprocess_args.batch_size = finetuning_args.batch_size
    preprocess_args.max_seq_length = data_args.max_seq_len
    preprocess_args.data_filelist = None
    preprocess_args.serialize_output = False
    image_processor = SiglipImageProcessor.from_pretrained(model_args.model_name_or_path)
    tokenizer = Ernie4_5_Tokenizer.from_pretrained(model_args.model_name_or_path, padding_side="right",
                                                   model_max_length=data_args.max_seq_len)
    processor = End2EndProcessor(preprocess_args, tokenizer, image_processor)
    processor.train().sft()
    reader = types.SimpleNamespace(data_processor=processor, need_prefix=False)  # what the OCR-VL-SFT stage passes
    reader.reformat_meta = lambda meta: SFTMultimodalDatasetJson.reformat_meta(reader, meta)
    records = ExampleSet(types.SimpleNamespace(pp_need_data_degree=0), data, 0, None, shuffle_json=False,
                         process_fn=lambda example: SFTMultimodalDatasetJson.example_to_feature_stage3(reader, example),
                         data_rank=0, data_size=1)
    features = records[index]
    meta = records.exs[index]
    if features.get("data_not_valid"):
        raise RuntimeError(f"ERNIEKit's reader drops record {index} of {data} (its log above says why)")
    ids, labels = [int(i) for i in features["input_ids"]], [int(i) for i in features["labels"]]
    fix = getattr(sys.modules.get(erniekit_marker_hook.TARGET_MODULE), erniekit_marker_hook.FLAG, None)
    notes = [f"assistant marker fix applied: {fix}" if fix else "ERNIEKit's own assistant marker (no fix applied)"]
    import erniekit

    where = erniekit.__file__.rsplit("/erniekit/", 1)[0]
    return {"trainer": f"ERNIEKit ({where})", "ids": ids, "loss": loss_tokens(ids, labels, shifted=False), "notes": notes,
            "prompt": _first_prompt(meta["text_info"]), "image": str(meta["image_info"][0]["image_url"])}


def _first_prompt(text_info: list[dict]) -> str:
    """The leading ``mask`` items, joined as ERNIEKit's reader merges consecutive items of one tag."""
    prompt = []
    for item in text_info:
        if item.get("tag") != "mask":
            break
        prompt.append(item["text"])
    return "".join(prompt)


BUILDERS = {"paddleformers": paddleformers_input, "erniekit": erniekit_input}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paddle_ocrvl_sft.backends.training_input")
    parser.add_argument("backend", choices=sorted(BUILDERS))
    parser.add_argument("config")
    parser.add_argument("--data", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import yaml  # both trainers install PyYAML (they read their configs with it)

    with open(args.config, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    try:
        result = BUILDERS[args.backend](config, args.data, args.index)
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the caller with the trainer's own message
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc().splitlines()[-12:]}
        code = 2
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
