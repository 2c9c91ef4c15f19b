"""Train/inference prompt agreement: proof that the model is trained on the prompt it will be asked with.

A fine-tune learns the answer that follows ONE token sequence. If inference sends another one —
another end of the user turn (PaddleOCR-VL-1.5 and 1.6 end it with ``"\\nAssistant:\\n"``, the
first release and the trainers' built-in code with ``"\\nAssistant: "``), a ``<s>`` the tokenizer
adds, another image token count — the fine-tuned behaviour is asked for with a prompt it never saw.
Nothing fails; the model is just worse. So before any launch this module builds both sides for
the same sample and compares them token by token:

- **training**: the first valid training sample (of the first training file the trainer reads as it
  is: not a replay file a concatenating trainer reads resampled) through the trainer's OWN data code,
  run with the trainer's Python and the plan's PYTHONPATH (an ERNIEKit plan's marker fix), as the
  launch runs it (:mod:`paddle_ocrvl_sft.backends.training_input`): its token ids, and which tokens
  carry loss;
- **inference**: the same image and prompt through PaddleX's native PaddleOCR-VL predictor's
  processor, built by PaddleX's own ``build_processor`` from the base model's
  ``chat_template.jinja`` and tokenizer; for ``export --format hf`` bundles also through
  transformers (PaddleX's transformers engine: ``AutoProcessor`` and a plain
  ``apply_chat_template``; this package's own ``predict`` path).

They agree when the inference ids equal the training ids up to the first answer token — image
placeholder count included — and the loss starts exactly there (no prompt token is trained on).
Otherwise the plan is refused with both sequences decoded side by side and the first difference
marked. ``plan`` checks before writing the plan, ``doctor --plan`` and ``train`` again before a
launch, and ``export`` checks the bundle it writes against the training prompt the plan recorded,
so a tokenizer file that changes on the way is caught where it changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from paddle_ocrvl_sft.errors import UserError

IMAGE_PLACEHOLDER = "<|IMAGE_PLACEHOLDER|>"
SHOWN_ANSWER_TOKENS = 3  # training tokens shown past the prompt in a mismatch report
EQUAL_ROWS_KEPT = 6  # rows kept at each end of a long equal stretch in a mismatch report
PROBE_TIMEOUT = 900  # seconds for the trainer's Python to start and build one sample (imports dominate)


class Disagreement(UserError):
    """Training and inference inputs differ (the message shows both)."""


@dataclass(frozen=True)
class Sample:
    """The sample both sides are built from: the first valid one of a training file (:func:`sample_file`)."""

    where: str  # FILE:LINE
    path: str  # the ERNIEKit-format file
    index: int  # record index in that file (ERNIEKit reads records in file order)
    image: str  # resolved image path
    prompt: str


@dataclass
class Tokens:
    """One side's input ids. ``loss``: indices of trained tokens (training side only)."""

    ids: list[int]
    by: str
    loss: list[int] | None = None
    notes: list[str] = field(default_factory=list)
    read: tuple[str | None, str | None] = (None, None)  # training side: (prompt, image) of the record the trainer read

    @property
    def prompt_len(self) -> int:
        """Tokens before the first trained one (the whole sequence for inference)."""
        return self.loss[0] if self.loss else len(self.ids)

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids[: self.prompt_len]


# --- the sample ---------------------------------------------------------------------------------


def first_sample(path: str | os.PathLike) -> Sample:
    """The first sample of ``path`` the data validator finds no error in (what plan counts as valid)
    with one image: PaddleX asks with one image per query."""
    from paddle_ocrvl_sft.data.sample import image_location, image_urls, sample_turns
    from paddle_ocrvl_sft.data.validate import ValidateOptions, validate_paths

    found: list[Sample] = []
    seen = [0]

    class Found(Exception):
        pass

    def on_record(value, file, line, errors) -> None:
        index = seen[0]
        seen[0] += 1
        if errors or not isinstance(value, dict) or len(image_urls(value)) != 1:
            return
        (prompt, _), *_ = sample_turns(value)
        found.append(Sample(f"{file}:{line}", str(Path(file).resolve()), index, image_location(image_urls(value)[0], file),
                            prompt))
        raise Found

    try:
        validate_paths([path], ValidateOptions(max_seq_len=None, decode=False), on_record=on_record)
    except Found:
        return found[0]
    raise UserError(f"{path}: no valid one-image sample to check the prompt with (run `python -m paddle_ocrvl_sft data "
                    "validate`; PaddleX asks with one image per query)")


# --- inference side -----------------------------------------------------------------------------


def _import_paddlex() -> str:
    """Import paddlex (offline: no model-source check)."""
    os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
    with _quiet():
        import paddlex
    return paddlex.__version__


@contextlib.contextmanager
def _quiet():
    """paddle warns about ccache when its cpp_extension is first imported (by PaddleX, lazily): not ours to show."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No ccache found")
        yield


def paddlex_processor(model_dir: str | os.PathLike, model_name: str):
    """PaddleX's own PaddleOCR-VL processor for ``model_dir``, built by the native predictor's
    ``build_processor`` (its tokenizer with ``chat_template.jinja``, its image processor); no weights."""
    import types

    with _quiet():
        from paddlex.inference.models.doc_vlm.predictor import DocVLMLocalPredictor

        return DocVLMLocalPredictor.build_processor(types.SimpleNamespace(model_name=model_name, model_dir=str(model_dir)))


def paddlex_input(model_dir: str | os.PathLike, image: str, prompt: str, model_name: str | None = None,
                  label: str | None = None) -> tuple[Tokens, "Namer"]:
    """The ids PaddleX's native predictor gives the model for ``image`` and ``prompt`` (its
    ``process`` calls exactly ``processor.preprocess([{"image", "query"}])``), and its tokenizer's names."""
    from paddle_ocrvl_sft.bundle import model_name_of

    paddlex_version = _import_paddlex()

    name = model_name or model_name_of(Path(model_dir))
    try:
        processor = paddlex_processor(model_dir, name)
        batch = processor.preprocess([{"image": image, "query": prompt}])
    except Exception as exc:  # noqa: BLE001 - PaddleX's own message is the useful part
        raise UserError(f"{model_dir}: PaddleX cannot build its inference input: {type(exc).__name__}: {exc}") from None
    ids = [int(i) for i in batch["input_ids"][0].tolist()]
    label = label or f"{Path(model_dir).name}/chat_template.jinja"
    return Tokens(ids, f"PaddleX {paddlex_version} native predictor ({label})"), \
        Namer(processor.tokenizer)


def transformers_engine_input(model_dir: str | os.PathLike, image: str, prompt: str, model_name: str) -> Tokens:
    """The ids PaddleX's transformers engine gives the model: the real predictor
    (``create_predictor(..., engine="transformers")``: transformers' ``AutoProcessor`` and a plain
    ``apply_chat_template``) with its ``generate`` replaced by a recorder of its inputs."""
    paddlex_version = _import_paddlex()
    from paddlex import create_predictor

    seen = []

    def record_inputs(model_inputs, generate_kwargs):
        seen.append([int(i) for i in model_inputs["input_ids"][0].tolist()])
        return model_inputs["input_ids"]  # "generated" nothing past the prompt

    try:
        predictor = create_predictor(model_name, model_dir=str(model_dir), engine="transformers", device="cpu")
        predictor.generate = record_inputs
        list(predictor.predict([{"image": image, "query": prompt}]))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{model_dir}: PaddleX's transformers engine cannot load or run it: {type(exc).__name__}: {exc}") from None
    return Tokens(seen[0], f"PaddleX {paddlex_version} transformers engine (AutoProcessor, apply_chat_template)")


def hf_predict_input(model_dir: str | os.PathLike, image: str, prompt: str) -> Tokens:
    """The ids this package's ``predict --backend transformers`` / ``serve`` give the model."""
    from PIL import Image

    from paddle_ocrvl_sft.predict import hf_inputs, hf_processor

    with Image.open(image) as im:
        batch = hf_inputs(hf_processor(model_dir), [im.convert("RGB")], [prompt])
    return Tokens([int(i) for i in batch["input_ids"][0].tolist()], "paddle-ocrvl-sft predict --backend transformers")


class Namer:
    """Token ids as the tokenizer's pieces (SentencePiece's U+2581 shown as a space), for reports."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.image_id = int(tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER))

    def __call__(self, token: int) -> str:
        piece = self.tokenizer.convert_ids_to_tokens(int(token))
        return repr(str(piece).replace("\u2581", " "))


# --- training side ------------------------------------------------------------------------------


class Probe:
    """The trainer-side child process of one check: started by :func:`training_input` on a worker
    thread, stopped by :meth:`cancel` from the other side when PaddleX's side fails (its result is
    not needed then, and it may take minutes)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.cancelled = False

    def start(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        with self.lock:
            if self.cancelled:
                raise UserError("prompt agreement: the training side was cancelled")
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            return self.proc

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()


def training_input(backend: str, trainer_env, config_path: Path, data: str, index: int,
                   launch_env: dict[str, str], probe: Probe | None = None) -> Tokens:
    """Run :mod:`paddle_ocrvl_sft.backends.training_input` with the trainer's Python."""
    from paddle_ocrvl_sft.backends import envs

    probe = probe or Probe()
    with tempfile.TemporaryDirectory(prefix="paddle-ocrvl-sft-agreement-") as tmp:
        out = Path(tmp) / "training_input.json"
        # as `train` launches it (train.command_for): a dir holding only this package first (never the dir
        # above it: a regular install's site-packages, whose transformers/numpy/yaml would shadow the
        # trainer's), then the plan's PYTHONPATH (ERNIEKit's marker fix), then the user's
        python_path = [str(envs.project_path()), launch_env.get("PYTHONPATH"), os.environ.get("PYTHONPATH")]
        env = trainer_env.env({**os.environ, "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join(filter(None, python_path))})
        cmd = [str(trainer_env.python), "-m", "paddle_ocrvl_sft.backends.training_input", backend, str(config_path),
               "--data", data, "--index", str(index), "--out", str(out)]
        proc = probe.start(cmd, env)
        try:
            stdout, stderr = proc.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise UserError(f"{backend}: the trainer's Python ({trainer_env.python}) did not build the training sample "
                            f"within {PROBE_TIMEOUT} s") from None
        try:
            result = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {"error": f"exit {proc.returncode}, no result"}
    if "error" in result:
        tail = ((stderr or "") + (stdout or "")).strip().splitlines()[-8:]
        hint = ("; is this the trainer's Python? (`train --skip-agreement-check` starts without the check)"
                if "ModuleNotFoundError" in result["error"] else "")
        raise UserError(f"{backend}: could not build the training input of {data} record {index} with the trainer's own "
                        f"data code ({trainer_env.python}): {result['error']}{hint}" + "".join(f"\n    {line}" for line in tail))
    return Tokens(result["ids"], f"{result['trainer']} data pipeline", loss=result["loss"], notes=result["notes"],
                  read=(result.get("prompt"), result.get("image")))


# --- comparing ----------------------------------------------------------------------------------


def differences(training: Tokens, inference: Tokens) -> list[str]:
    """Why the two do not agree (empty when they do)."""
    problems = []
    if not training.loss:
        problems.append("no token of the training sample carries loss")
        return problems
    first = _first_difference(training.prompt_ids, inference.ids)
    if first is not None:
        problems.append(f"the token ids differ from position {first}")
    if training.prompt_len != len(inference.ids):
        problems.append(f"training's loss starts at token {training.prompt_len}, but the inference prompt is "
                        f"{len(inference.ids)} tokens long: the model would answer from token {len(inference.ids)}")
    return problems


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def side_by_side(training: Tokens, inference: Tokens, name: Namer) -> str:
    """Both sequences decoded one token per row and aligned (difflib), runs of image placeholders
    collapsed; ``>>`` marks the first difference, ``*`` the tokens that carry loss."""
    import difflib

    prompt, answer = training.prompt_ids, training.ids[training.prompt_len: training.prompt_len + SHOWN_ANSWER_TOKENS]
    loss = set(training.loss or ())
    rows: list[tuple[str, str, str, str, str]] = []  # mark, training position, token, inference position, token

    def cell(ids, i, n=1, trained=False):
        if i is None:
            return "", ""
        text = f"{ids[i]} {name(ids[i])}" + (f" x{n}" if n > 1 else "") + (" *" if trained else "")
        return (f"{i}" if n == 1 else f"{i}-{i + n - 1}"), text

    marked = False
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=prompt, b=inference.ids, autojunk=False).get_opcodes():
        if tag == "equal":
            block, k = [], 0
            while k < i2 - i1:
                n = 1
                while (k + n < i2 - i1 and prompt[i1 + k] == name.image_id == prompt[i1 + k + n]):
                    n += 1
                block.append(("  ", *cell(prompt, i1 + k, n, i1 + k in loss), *cell(inference.ids, j1 + k, n)))
                k += n
            if len(block) > 3 * EQUAL_ROWS_KEPT:  # a long stretch of agreement: its ends are enough
                hidden = len(block) - 2 * EQUAL_ROWS_KEPT
                block[EQUAL_ROWS_KEPT:-EQUAL_ROWS_KEPT] = [("  ", "", f"... {hidden} more rows, the same on both sides ...", "", "")]
            rows += block
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            left = cell(prompt, i1 + k if i1 + k < i2 else None, 1, i1 + k in loss)
            right = cell(inference.ids, j1 + k if j1 + k < j2 else None)
            rows.append(("  " if marked else ">>", *left, *right))
            marked = True
    for k in range(len(answer)):
        where = training.prompt_len + k
        rows.append(("  ", *cell(training.ids, where, 1, where in loss),
                     "", "(the model answers from here)" if k == 0 else ""))
    w = [max(len(r[c]) for r in rows) for c in range(1, 4)]
    w[1] = max(w[1], len(training.by) + 10)
    lines = [f"     {'#':>{w[0]}}  {'TRAINING: ' + training.by:<{w[1]}}  {'#':>{w[2]}}  INFERENCE: {inference.by}"]
    lines += [f"  {m} {a:>{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}" for m, a, b, c, d in rows]
    return "\n".join(lines) + "\n  (* = the token carries loss; >> = first difference)"


def compare(training: Tokens, inference: Tokens, name: Namer, sample: Sample) -> None:
    """Raise :class:`Disagreement` with both sequences side by side unless they agree."""
    problems = differences(training, inference)
    if not problems:
        return
    raise Disagreement(
        f"prompt agreement FAILED: {'; '.join(problems)}\n"
        f"  sample {sample.where}: image {sample.image}, prompt {sample.prompt!r}\n"
        f"  image tokens: training {training.prompt_ids.count(name.image_id)}, inference {inference.ids.count(name.image_id)}; "
        f"prompt tokens: training {training.prompt_len}, inference {len(inference.ids)}\n"
        + "".join(f"  training: {note}\n" for note in training.notes)
        + side_by_side(training, inference, name))


def encode_ids(ids: list[int]) -> str:
    """``"100273 384 100295*168 101306"``: a token list as compact, readable text (runs as id*count)."""
    out, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and ids[j] == ids[i]:
            j += 1
        out.append(f"{ids[i]}*{j - i}" if j - i > 2 else " ".join([str(ids[i])] * (j - i)))
        i = j
    return " ".join(out)


def decode_ids(text: str) -> list[int]:
    ids = []
    for part in text.split():
        token, _, count = part.partition("*")
        ids += [int(token)] * (int(count) if count else 1)
    return ids


# --- a plan -------------------------------------------------------------------------------------


def sample_file(record: dict) -> int:
    """Which of the plan's training files the checked sample comes from: the first one the trainer
    reads as it is. A concatenating trainer (PaddleFormers) reads a file mixed in at a share
    (``--data FILE:R``, ``--replay``) as a resampled, shuffled copy: its first sample may not be there."""
    rows = record["datasets"]["train"]
    return next((i for i, row in enumerate(rows) if row.get("samples_per_epoch") is None), 0)


def trainer_record(backend: str, config: dict, sample: Sample, file: int = 0) -> tuple[str, int]:
    """Which file and record the trainer reads ``sample`` (of the plan's training file ``file``) from:
    ERNIEKit reads the plan's data file itself; PaddleFormers the messages file prepared from it,
    where the record is found by what it is (its prompt and image): the messages file keeps records
    :func:`first_sample` passes over (several images), so its record numbers are not the data file's."""
    if backend != "paddleformers":
        return sample.path, sample.index
    data = str(config["train_dataset_path"]).split(",")[file]
    with open(data, encoding="utf-8") as fh:
        for index, line in enumerate(fh):
            try:
                value = json.loads(line)
                images, prompt = value["images"], value["messages"][0]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            # as PaddleFormers reads it (training_input.paddleformers_input): paths relative to the file's dir
            image = os.path.join(os.path.dirname(data), images[0]) if len(images) == 1 else None
            if (prompt.replace("<image>", "") == sample.prompt and image and os.path.exists(image)
                    and os.path.samefile(image, sample.image)):
                return data, index
    raise UserError(f"{data}: holds no record of {sample.where} (prompt {sample.prompt!r}, image {sample.image}); "
                    "the training data changed since `plan`: re-run `plan`")


def _release_of(record: dict, base: str):
    from paddle_ocrvl_sft import releases

    return releases.detect(base, (record.get("release") or {}).get("name")).release


def check(backend: str, config: dict, record: dict, launch_env: dict[str, str], trainer_env,
          log: Callable[[str], None] = lambda line: None) -> dict:
    """Build both inputs for the plan's first valid sample and compare them; the plan.json record.

    ``config``/``launch_env`` name files where they are now (a plan being written lives in a
    staging dir). Raises :class:`Disagreement` when they differ.
    """
    import yaml

    started = time.monotonic()
    base = record["model"]
    release = _release_of(record, base)
    file = sample_file(record)
    sample = first_sample(record["datasets"]["train"][file]["path"])
    data, index = trainer_record(backend, config, sample, file)
    with tempfile.TemporaryDirectory(prefix="paddle-ocrvl-sft-agreement-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        probe = Probe()
        with ThreadPoolExecutor(max_workers=1) as pool:  # the trainer's Python and PaddleX side by side
            pending = pool.submit(training_input, backend, trainer_env, config_path, data, index, launch_env, probe)
            try:
                inference, name = paddlex_input(base, sample.image, sample.prompt, release.paddlex_model_name)
            except BaseException:
                probe.cancel()  # leaving the pool waits for the worker: not up to PROBE_TIMEOUT for an unneeded result
                raise
            training = pending.result()
    _same_record(training, sample, data, index)
    compare(training, inference, name, sample)
    seconds = round(time.monotonic() - started, 1)
    log(f"prompt agreement: {training.by} and {inference.by} give the same {training.prompt_len} prompt tokens "
        f"({training.prompt_ids.count(name.image_id)} image tokens) for {sample.where}; the loss starts at the answer "
        f"({seconds} s)")
    return {
        "status": "agreed", "sample": sample.where, "image": sample.image, "prompt": sample.prompt,
        "release": release.name,
        "training": {"by": training.by, "prompt_tokens": training.prompt_len, "loss_from": training.prompt_len,
                     "image_tokens": training.prompt_ids.count(name.image_id), "notes": training.notes},
        "inference": {"by": inference.by, "tokens": len(inference.ids), "image_tokens": inference.ids.count(name.image_id)},
        "prompt_ids": encode_ids(training.prompt_ids),
        "seconds": seconds,
    }


def _same_record(training: Tokens, sample: Sample, data: str, index: int) -> None:
    """The trainer read the sample the inference side was built from (a stale prepared file would not)."""
    prompt, image = training.read
    same_image = image is not None and os.path.exists(image) and os.path.samefile(image, sample.image)
    if prompt is not None and (prompt != sample.prompt or not same_image):
        raise UserError(f"{data}: record {index} is not {sample.where} any more (prompt {prompt!r}, image {image}); "
                        "the training data changed since `plan`: re-run `plan`")


def relocate(value, old: Path, new: Path):
    """``value`` with paths under ``old`` moved under ``new`` (strings, lists, dicts)."""
    if isinstance(value, str):
        parts = value.split(",")
        moved = [str(new / Path(p).relative_to(old)) if Path(p).is_absolute() and (Path(p) == old or old in Path(p).parents)
                 else p for p in parts]
        return ",".join(moved)
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    return value


def not_checked(why: str) -> dict:
    return {"status": "not checked", "why": why}


def check_new_plan(stage: Path, plan_dir: Path, config: dict, record: dict,
                   log: Callable[[str], None] = lambda line: None) -> dict:
    """``plan``'s check, on the plan being written in ``stage`` (it becomes ``plan_dir``).

    Without the trainer installed here the check cannot run in its environment: the record says
    so and ``train`` runs it before launching (it needs the trainer anyway).
    """
    from paddle_ocrvl_sft import backends
    from paddle_ocrvl_sft.backends import envs

    backend = record["backend"]
    trainer_env = envs.resolve(backend)
    if trainer_env is None:
        why = (f"{backends.get(backend).title} is not installed here (`python -m paddle_ocrvl_sft backend install "
               f"{backend}`); `train` checks it before it starts")
        log(f"prompt agreement: not checked: {why}")
        return not_checked(why)
    return check(backend, relocate(config, plan_dir, stage), record,
                 relocate(record["train"].get("env", {}), plan_dir, stage), trainer_env, log)


def check_plan(plan_dir: str | os.PathLike, log: Callable[[str], None] = lambda line: None, trainer_env=None,
               overrides: dict | None = None) -> dict:
    """The check on a written plan (``train`` before a launch, with its ``key=value`` overrides;
    ``doctor --plan``)."""
    import yaml

    from paddle_ocrvl_sft import backends
    from paddle_ocrvl_sft.backends import envs
    from paddle_ocrvl_sft.backends.schema import apply_overrides

    plan_dir = Path(plan_dir)
    try:
        record = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((plan_dir / "config.yaml").read_text(encoding="utf-8"))
        backend, launch_env = record.get("backend", backends.DEFAULT), dict(record["train"].get("env", {}))
        if not record.get("datasets", {}).get("train") or "model" not in record:
            raise KeyError("datasets.train / model")
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found (write the plan with `plan ... -o {plan_dir}`)") from None
    except (KeyError, IndexError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{plan_dir}: plan.json/config.yaml unreadable or from an older version ({exc!r}); re-run `plan`") from None
    trainer_env = trainer_env or envs.require(backend)
    return check(backend, apply_overrides(config, overrides or {}), record, launch_env, trainer_env, log)


def before_launch(plan_dir: str | os.PathLike, trainer_env, check: bool, echo: Callable[[str], None],
                  overrides: dict | None = None) -> dict:
    """``train``'s check just before it starts the trainer (what run records keep as "agreement")."""
    if not check:
        echo("note: prompt agreement NOT checked (--skip-agreement-check)")
        return not_checked("skipped by --skip-agreement-check")
    return check_plan(plan_dir, log=echo, trainer_env=trainer_env, overrides=overrides)


# --- an exported bundle -------------------------------------------------------------------------


def plan_reference(run_dir: str | os.PathLike, plan_dir: str | os.PathLike | None = None) -> dict | None:
    """The training prompt a plan recorded for RUN_DIR, if any: the "agreement" of the plan's newest
    run (``runs/<id>/record.json``: `train` checks before each launch, also when `plan` could not, the
    trainer not installed there), else of its plan.json.

    Without ``plan_dir`` the plan is looked for where `train` puts it: RUN_DIR is the plan's
    output_dir (PLAN_DIR/output by default) or one of its checkpoints.
    """
    import yaml

    run_dir = Path(run_dir).resolve()
    candidates = [Path(plan_dir)] if plan_dir else [run_dir.parent, run_dir.parent.parent]
    for candidate in candidates:
        try:
            record = json.loads((candidate / "plan.json").read_text(encoding="utf-8"))
            config = yaml.safe_load((candidate / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            continue
        output = Path(str(config.get("output_dir", ""))).resolve()
        if plan_dir or output in (run_dir, run_dir.parent):
            for agreed in (_newest_run_agreement(candidate), record.get("agreement") or {}):
                if agreed.get("status") == "agreed":
                    return agreed
            return None
    return None


def _newest_run_agreement(plan_dir: Path) -> dict:
    """The "agreement" of the plan's newest run record ({} without one): the run that wrote output_dir."""
    runs = []
    for path in (plan_dir / "runs").glob("*/record.json"):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(run, dict):
            runs.append((str(run.get("started") or ""), path.parent.name, run))
    return (max(runs, key=lambda item: item[:2])[2].get("agreement") or {}) if runs else {}


def check_bundle(bundle: str | os.PathLike, fmt: str, base_dir: str | os.PathLike, model_name: str,
                 trained: dict | None, probe_image: Callable) -> str:
    """The bundle's inference input against the training prompt; raises :class:`Disagreement`.

    ``trained``: the plan's agreement record (its sample and prompt ids). Without one (a run not
    trained from a plan, an older plan) the reference is the base model's PaddleX input for a probe
    image (``probe_image()``, a PIL image), which the plan's check found equal to training. ``paddle``
    bundles are read by PaddleX's native predictor; ``hf`` bundles also by PaddleX's transformers
    engine and this package's transformers path (``predict``/``serve``).
    """
    bundle = Path(bundle)
    with tempfile.TemporaryDirectory(prefix="paddle-ocrvl-sft-agreement-") as tmp:
        if trained and Path(trained["image"]).is_file():
            image, prompt = trained["image"], trained["prompt"]
            ids = decode_ids(trained["prompt_ids"])
            expected = Tokens(ids, f"training, as plan recorded it ({trained['training']['by']})", loss=[len(ids)])
            sample = Sample(trained["sample"], "", 0, image, prompt)
        else:
            image, prompt = str(Path(tmp) / "probe.png"), "OCR:"
            probe_image().save(image)
            base, _ = paddlex_input(base_dir, image, prompt, model_name, label="BASE")
            expected = Tokens(base.ids, f"the base model ({base.by})", loss=[len(base.ids)])
            sample = Sample("a probe image", "", 0, image, prompt)
        native, name = paddlex_input(bundle, image, prompt, model_name, label="the bundle")
        sides = [native]
        if fmt == "hf":
            sides += [transformers_engine_input(bundle, image, prompt, model_name), hf_predict_input(bundle, image, prompt)]
        for side in sides:
            compare(expected, side, name, sample)
    return (f"prompt agreement: {', '.join(side.by for side in sides)} give the bundle the same {len(expected.ids)} prompt "
            f"tokens as {expected.by} for {sample.where}")
