"""``doctor``: is this machine ready to fine-tune (and serve) PaddleOCR-VL? One line per check.

Two halves. Probe functions gather facts: paddle is imported in a child process of each Python that
matters (a broken paddle or CUDA install cannot take doctor down with it), GPUs come from
``nvidia-smi`` (else from paddle), trainer environments from ``backends.envs``, package versions from
``importlib.metadata``, free space from ``shutil.disk_usage``. Check functions are pure: facts in,
one :class:`Check` (OK / WARN / FAIL, what was found, the fix) out, so tests feed them every case.

What needs a GPU depends on the plan: a ``--device cpu`` plan needs none, a GPU plan FAILs without
one, and without a plan a missing GPU is a WARN. Thresholds (shared/reference/FACTS.md and the
PaddleOCR-VL docs' device table): Paddle inference runs on compute capability >= 7.0 (V100, T4);
training needs >= 8.0 (Ampere: bf16 and the flash-attention / flashmask kernels; ERNIEKit has no fp32
path) and a CUDA 12 build (the guide's container is paddle:3.2.0-gpu-cuda12.6).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from paddle_ocrvl_sft import backends
from paddle_ocrvl_sft.bundle import VL_REC_REQUIRED
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.plan import (
    BYTES_PER_PARAM_SHARDABLE as OPTIMIZER_BYTES_PER_PARAM,  # fp32 master + Adam m, v
)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CLI = "python -m paddle_ocrvl_sft"
TRAIN_CC = (8, 0)  # bf16 + flash attention / flashmask: Ampere or newer
INFER_CC = (7, 0)  # PaddleOCR-VL's Paddle inference (V100, T4)
TRAIN_CUDA = (12, 0)
GPU_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/cu126/"  # Paddle's own index (PyPI has the CPU build)
GPU_PADDLE = f"pip install paddlepaddle-gpu==3.2.0 -i {GPU_INDEX}, or the Docker image (docker/)"
INFER_PACKAGES = 'pip install "paddleocr[doc-parser]==3.7.0" paddlex==3.7.2'
# What plan/train read from a base model dir besides the weights (ERNIEKit and PaddleFormers alike).
TRAIN_BASE_FILES = ("config.json", "preprocessor_config.json", "tokenizer.model", "tokenizer_config.json")
PROBE_TIMEOUT = 180


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" — fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:<4} {self.name}: {self.detail}{fix}"


def needs_gpu_status(device: str | None) -> str:
    """The status of a missing GPU capability: FAIL for a GPU plan, OK for a CPU plan, WARN without a plan."""
    return {"gpu": FAIL, "cpu": OK}.get(device, WARN)


def no_cuda_fix(python: str) -> str:
    """The fix for a CPU build of paddle in ``python`` (both builds install the same ``paddle`` package)."""
    return (f"training on GPUs needs paddlepaddle-gpu: `{python} -m pip uninstall -y paddlepaddle && {python} -m pip install "
            f"paddlepaddle-gpu==3.2.0 -i {GPU_INDEX}`, or the Docker image (docker/); CPU training is for tiny models")


def version_tuple(text: str | None) -> tuple[int, ...]:
    """Leading numeric parts: "3.2.0.post126" -> (3, 2, 0), "12.6" -> (12, 6)."""
    parts = []
    for part in (text or "").split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def size_text(n: float) -> str:
    unit, scale = next(((u, k) for u, k in (("GB", 1e9), ("MB", 1e6)) if n >= k), ("KB", 1e3))
    return f"{n / scale:.1f} {unit}"


def count_text(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else str(n)


# --- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: tuple[int, int]
    free_mb: int | None = None  # None: unknown (paddle reports no free memory)
    total_mb: int | None = None

    def label(self) -> str:
        free = f", {self.free_mb / 1024:.1f} GiB free" if self.free_mb is not None else ""
        return f"{self.index}: {self.name} (compute {self.compute_capability[0]}.{self.compute_capability[1]}{free})"


@dataclass(frozen=True)
class PaddleFacts:
    """paddle as one Python imports it."""

    python: str
    version: str | None = None  # None: it does not import
    distribution: str | None = None  # paddlepaddle / paddlepaddle-gpu
    cuda: str | None = None  # the CUDA version of the build; None: a CPU build
    cudnn: str | None = None
    gpus: tuple[Gpu, ...] = ()  # devices this paddle sees
    error: str | None = None


@dataclass(frozen=True)
class GpuFacts:
    source: str | None  # "nvidia-smi", "paddle" or None (nothing found)
    gpus: tuple[Gpu, ...] = ()
    error: str | None = None  # nvidia-smi exists but failed


@dataclass(frozen=True)
class BackendFacts:
    name: str
    status: str  # envs.listing(): installed / installed (lock changed: reinstall) / on PATH / missing
    where: str | None = None
    versions: dict = field(default_factory=dict)  # from importing the trainer now
    error: str | None = None  # the trainer does not import
    paddle: PaddleFacts | None = None


@dataclass(frozen=True)
class PlanFacts:
    """What doctor needs of a plan (plan.json + config.yaml)."""

    dir: str
    backend: str
    device: str
    gpus_per_node: int
    nodes: int
    visible_devices: tuple[str, ...]
    memory_estimate_gb: float | None
    model_dir: str
    output_dir: str
    max_steps: int
    save_strategy: str
    save_steps: int
    save_total_limit: int | None
    epochs: float
    max_seq_len: int | None
    lora: bool
    train_files: tuple[str, ...]


@dataclass(frozen=True)
class ModelFacts:
    path: str
    is_dir: bool
    files: frozenset = frozenset()  # names of the regular files in it
    weights_error: str | None = None  # no usable weights (find_weights' message)
    truncated: tuple[str, ...] = ()  # "NAME (SIZE of EXPECTED bytes)"
    weights_bytes: int = 0
    params: int = 0


@dataclass(frozen=True)
class ReleaseFacts:
    """What a model dir's files say about its PaddleOCR-VL release, what a plan recorded, and which
    releases the installed paddlex ships a pipeline for."""

    model_dir: str
    name: str | None = None  # detected from the files; None: refused
    said: str = ""  # releases.Detection.describe(), or the refusal
    evidence: str = ""  # what the files say, without the release's name
    ambiguous: bool = False  # 1.5 or 1.6 (a trainer's output has no inference.yml)
    planned: str | None = None  # plan.json's release; "" a plan that records none; None: no plan
    files_changed: bool = False  # the base's files say something else than when the plan was made
    paddlex_version: str | None = None
    paddlex_releases: tuple[str, ...] | None = None  # None: paddlex not installed or its configs unreadable
    first_paddlex: str | None = None  # the first checked paddlex release that ships the release's pipeline


@dataclass(frozen=True)
class DiskFacts:
    path: str  # where the outputs go
    measured_at: str  # the nearest existing dir (what disk_usage was asked about)
    free_bytes: int


# --- probes --------------------------------------------------------------------------------------

# Run by each Python that matters; one marked JSON line, whatever paddle prints around it.
PADDLE_PROBE = """\
import json
out = {}
try:
    import importlib.metadata as md
    import paddle
    out["version"] = paddle.__version__
    out["distribution"] = (md.packages_distributions().get("paddle") or ["paddlepaddle"])[0]
    if paddle.is_compiled_with_cuda():
        out["cuda"], out["cudnn"] = str(paddle.version.cuda()), str(paddle.version.cudnn())
        try:
            props = [paddle.device.cuda.get_device_properties(i) for i in range(paddle.device.cuda.device_count())]
            out["gpus"] = [[i, p.name, p.major, p.minor, p.total_memory // 2**20] for i, p in enumerate(props)]
        except Exception:  # no driver: the gpus check reports what nvidia-smi (or nothing) shows
            pass
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print("DOCTOR-PADDLE " + json.dumps(out), flush=True)
"""


def _run_python(python: str, code: str, env: dict | None = None) -> subprocess.CompletedProcess | str:
    try:
        return subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return f"did not finish in {PROBE_TIMEOUT} s"
    except OSError as exc:
        return f"cannot run {python}: {exc.strerror}"


def _paddle_from(python: str, proc: subprocess.CompletedProcess | str) -> PaddleFacts:
    if isinstance(proc, str):
        return PaddleFacts(python, error=proc)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("DOCTOR-PADDLE ")), None)
    if line is None:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return PaddleFacts(python, error=tail)
    out = json.loads(line.split(" ", 1)[1])
    gpus = tuple(Gpu(i, name, (major, minor), None, total) for i, name, major, minor, total in out.get("gpus", ()))
    return PaddleFacts(python, out.get("version"), out.get("distribution"), out.get("cuda"), out.get("cudnn"), gpus,
                       out.get("error"))


def probe_paddle(python: str | None = None) -> PaddleFacts:
    """Import paddle in ``python`` (default: this one; a child process) and report its version and CUDA build."""
    python = python or sys.executable
    return _paddle_from(python, _run_python(python, PADDLE_PROBE))


def probe_trainer(name: str, python: str) -> tuple[PaddleFacts, dict, str | None]:
    """Import paddle, then the trainer (``envs.PROBE``), in the trainer's Python: one child process."""
    from paddle_ocrvl_sft.backends import envs

    proc = _run_python(python, PADDLE_PROBE + "import json\n" + envs.PROBE[name], env={**os.environ, "PYTHONPATH": ""})
    paddle = _paddle_from(python, proc)
    if isinstance(proc, str):
        return paddle, {}, proc
    if proc.returncode:
        return paddle, {}, (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return paddle, json.loads(proc.stdout.strip().splitlines()[-1]), None


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """``index, name, compute_cap, memory.free, memory.total`` lines (csv, noheader, nounits)."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        cc = version_tuple(parts[-3]) + (0, 0)
        gpus.append(Gpu(int(parts[0]), ", ".join(parts[1:-3]), cc[:2], int(float(parts[-2])), int(float(parts[-1]))))
    return tuple(gpus)


def probe_gpus(paddle: PaddleFacts | None = None) -> GpuFacts:
    """GPUs from ``nvidia-smi`` when it is on PATH (free memory included), else the ones paddle sees."""
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=index,name,compute_cap,memory.free,memory.total", "--format=csv,noheader,nounits"]
        try:
            proc = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return GpuFacts("nvidia-smi", error=str(exc))
        if proc.returncode == 0:
            return GpuFacts("nvidia-smi", parse_nvidia_smi(proc.stdout))
        if not (paddle and paddle.gpus):
            said = (proc.stdout + proc.stderr).strip().splitlines()
            return GpuFacts("nvidia-smi", error=said[-1] if said else f"exit status {proc.returncode}")
    if paddle and paddle.gpus:
        return GpuFacts("paddle", paddle.gpus)
    return GpuFacts(None)


def probe_backends() -> list[BackendFacts]:
    """Each trainer environment (``backend list``), its trainer imported now, in parallel."""
    from paddle_ocrvl_sft.backends import envs

    rows = envs.listing()
    found = {row["backend"]: envs.resolve(row["backend"], verify=False) for row in rows}
    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        probes = {name: pool.submit(probe_trainer, name, str(env.python)) for name, env in found.items() if env}
        facts = []
        for row in rows:
            name = row["backend"]
            if name not in probes:
                facts.append(BackendFacts(name, row["status"], row["where"]))
                continue
            paddle, versions, error = probes[name].result()
            facts.append(BackendFacts(name, row["status"], row["where"], versions or row["versions"], error, paddle))
    return facts


def package_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def patch_state() -> str | None:
    """The custom-prompt patch's state of the installed paddlex pipeline ("unpatched: ..."), None without paddlex."""
    from paddle_ocrvl_sft import patch

    try:
        st = patch.status(patch.find_target())
    except UserError as exc:
        return f"{patch.UNSUPPORTED}: {exc}" if package_version("paddlex") else None
    return f"{st.state}: {st.message}"


def load_plan_facts(plan_dir: str | os.PathLike) -> PlanFacts:
    import yaml

    plan_dir = Path(plan_dir)
    try:
        record = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((plan_dir / "config.yaml").read_text(encoding="utf-8"))
        launch = record["train"]
        visible = launch.get("env", {}).get("CUDA_VISIBLE_DEVICES", "")
        limit = config.get("save_total_limit")
        return PlanFacts(
            dir=str(plan_dir), backend=record.get("backend", backends.DEFAULT), device=record.get("device", "gpu"),
            gpus_per_node=int(launch.get("gpus_per_node", 0)), nodes=int(launch.get("nodes", 1)),
            visible_devices=tuple(d for d in visible.split(",") if d),
            memory_estimate_gb=(record.get("estimates", {}).get("gpu_memory_gb_per_gpu") or {}).get("value"),
            model_dir=str(config["model_name_or_path"]), output_dir=str(config["output_dir"]),
            max_steps=int(config["max_steps"]), save_strategy=str(config.get("save_strategy", "steps")),
            save_steps=int(config.get("save_steps", 500)), save_total_limit=int(limit) if limit else None,
            epochs=float(config.get("num_train_epochs", 1)), max_seq_len=config.get("max_seq_len"), lora="lora_rank" in record.get("numbers", {}),
            train_files=tuple(p for p in str(config.get("train_dataset_path", "")).split(",") if p),
        )
    except FileNotFoundError as exc:
        raise UserError(f"--plan {plan_dir}: {exc.filename} not found (write a plan with `{CLI} plan ... -o DIR`)") from None
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as exc:
        raise UserError(f"--plan {plan_dir}: plan.json/config.yaml unreadable ({exc!r}); re-run `plan`") from None


def probe_model(model_dir: str | os.PathLike) -> ModelFacts:
    """Which files a model dir holds and whether its weights are complete (sizes from the headers)."""
    from paddle_ocrvl_sft.export import find_weights
    from paddle_ocrvl_sft.safetensors_file import read_header, tensor_specs

    path = Path(model_dir)
    if not path.is_dir():
        return ModelFacts(str(path), False)
    files = frozenset(p.name for p in path.iterdir() if p.is_file())
    try:
        weights = find_weights(path)
        total = params = 0
        truncated = []
        for file in weights.files:
            header = read_header(file)
            with open(file, "rb") as fh:
                (header_size,) = struct.unpack("<Q", fh.read(8))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            expected, size = 8 + header_size + end, file.stat().st_size
            if size < expected:
                truncated.append(f"{file.name} ({size} of {expected} bytes)")
            total += end
            params += sum(math.prod(shape) for _, shape in tensor_specs(header).values())
    except UserError as exc:
        return ModelFacts(str(path), True, files, weights_error=str(exc).removeprefix(f"{path}: "))
    return ModelFacts(str(path), True, files, None, tuple(truncated), total, params)


def probe_release(model_dir: str | os.PathLike, plan_dir: str | os.PathLike | None, patch_data: dict) -> ReleaseFacts:
    """The release of ``model_dir`` (releases.detect), the plan's, and the installed paddlex's pipelines."""
    from paddle_ocrvl_sft import patch, releases

    try:
        detection = releases.detect(model_dir)
        found = {"name": detection.release.name, "said": detection.describe(), "evidence": "; ".join(detection.evidence)}
    except UserError as exc:
        found = {"said": str(exc), "ambiguous": isinstance(exc, releases.AmbiguousRelease)}
    planned = None
    if plan_dir is not None:
        record = json.loads((Path(plan_dir) / "plan.json").read_text(encoding="utf-8")).get("release") or {}
        planned = record.get("name") or ""
        evidence = [finding for finding, _ in releases.evidence_of(model_dir)[0]]
        found["files_changed"] = bool(planned) and evidence != record.get("evidence")
    wanted = planned or found.get("name")
    first = next((v for v in patch_data.get("supported_versions", [])
                  if wanted in patch_data.get("checked", {}).get(v, {}).get("releases", [])), None)
    try:
        target = patch.find_target()
        shipped = tuple(patch.release_pipelines(target.package_dir))
        version = target.version
    except UserError:
        shipped, version = None, package_version("paddlex")
    return ReleaseFacts(str(model_dir), planned=planned, paddlex_version=version, paddlex_releases=shipped,
                        first_paddlex=first, **found)


def probe_disk(path: str | os.PathLike) -> DiskFacts:
    """Free space where ``path`` is or will be (its nearest existing parent)."""
    where = Path(path).resolve()
    while not where.exists():
        where = where.parent
    return DiskFacts(str(path), str(where), shutil.disk_usage(where).free)


# --- checks (pure) -------------------------------------------------------------------------------


def check_python(version: tuple[int, ...], implementation: str, system: str, machine: str) -> Check:
    text = f"Python {'.'.join(map(str, version[:3]))} ({implementation}) on {system} {machine}"
    if version < (3, 10):
        return Check("python", FAIL, text, "paddle-ocrvl-sft needs Python >= 3.10")
    if system != "Linux":
        return Check("python", WARN, f"{text}: the trainers and the Docker image are Linux-only",
                     "train on Linux (data, plan, export and predict work here)")
    return Check("python", OK, text)


def check_paddle(p: PaddleFacts) -> Check:
    if p.version is None:
        return Check("paddle", FAIL, f"paddle does not import in {p.python}: {p.error}",
                     f"pip install paddlepaddle==3.3.1 (CPU) or paddlepaddle-gpu: {GPU_PADDLE}")
    build = f"CUDA {p.cuda}" if p.cuda else "CPU build"
    text = f"{p.distribution or 'paddlepaddle'} {p.version} ({build}) in {p.python}"
    version = version_tuple(p.version)
    if version[:1] < (3,) and version != (0, 0, 0):  # 0.0.0: a build from source
        return Check("paddle", FAIL, f"{text}: PaddleOCR-VL needs PaddlePaddle 3.x", "pip install paddlepaddle==3.3.1, or the GPU build: " + GPU_PADDLE)
    return Check("paddle", OK, text)


def check_cuda(p: PaddleFacts, device: str | None, where: str) -> Check:
    """The CUDA build of the paddle that trains (``where`` names that Python)."""
    if not p.cuda:
        purpose = {"gpu": "this plan trains on GPUs", "cpu": "fine for this --device cpu plan (tiny models)"}.get(device, "no GPU training or inference")
        return Check("cuda", needs_gpu_status(device), f"no CUDA build of paddle in {where}: {purpose}", no_cuda_fix(p.python))
    text = f"paddle in {where} is a CUDA {p.cuda} build" + (f" (cuDNN {p.cudnn})" if p.cudnn else "")
    if version_tuple(p.cuda) < TRAIN_CUDA:
        status = WARN if device != "gpu" else FAIL
        return Check("cuda", status, f"{text}: enough for Paddle inference (CUDA >= 11.8), training expects a CUDA 12 build",
                     f"install a CUDA 12 build: {GPU_PADDLE}")
    return Check("cuda", OK, text)


def check_gpus(g: GpuFacts, device: str | None, gpus_needed: int = 1) -> Check:
    """GPUs and their compute capability against what training (>= 8.0) and inference (>= 7.0) need."""
    status = needs_gpu_status(device)
    if g.error:
        return Check("gpus", status, f"nvidia-smi failed: {g.error}", "check the NVIDIA driver: `nvidia-smi` must list the GPUs")
    if not g.gpus:
        detail = "no NVIDIA GPU found" + (" (no nvidia-smi, and paddle sees none)" if g.source is None else "")
        if device == "cpu":
            return Check("gpus", OK, f"{detail}; none needed: the plan trains on the CPU")
        return Check("gpus", status, detail, "fine-tuning the 0.9B model needs an NVIDIA GPU with compute capability >= 8.0 "
                     "(A100/A800/H100/L40/RTX 30xx+); `plan --device cpu` is for tiny smoke runs")
    listed = "; ".join(gpu.label() for gpu in g.gpus) + f" (from {g.source})"
    trainable = [gpu for gpu in g.gpus if gpu.compute_capability >= TRAIN_CC]
    if device == "cpu":
        return Check("gpus", OK, f"{listed}; the plan trains on the CPU")
    if not trainable:
        usable = any(gpu.compute_capability >= INFER_CC for gpu in g.gpus)
        why = ("inference only: training needs compute capability >= 8.0 (bf16, flash attention / flashmask)" if usable
               else "too old for PaddleOCR-VL: Paddle inference needs compute capability >= 7.0")
        return Check("gpus", status, f"{listed}: {why}", "train on Ampere or newer GPUs (A100/A800/H100/L40/RTX 30xx+)"
                     + ("; not ERNIEKit with use_flash_attention=False on these: v1.4 builds its causal mask one key too long "
                        "without flash attention (docs/train.md, causal-mask)" if usable else ""))
    if device == "gpu" and len(trainable) < gpus_needed:
        return Check("gpus", FAIL, f"{listed}: the plan starts {gpus_needed} processes per node, {len(trainable)} GPU(s) "
                     "here can train", f"re-plan with --gpus {len(trainable)} (plan --gpus), or run on a node with more GPUs")
    return Check("gpus", OK, listed)


def check_gpu_memory(gpus: tuple[Gpu, ...], estimate_gb: float, visible: tuple[str, ...], gpus_needed: int) -> Check:
    """Free memory of the GPUs a plan uses against its per-GPU ESTIMATE (plan.json "estimates")."""
    by_index = {str(gpu.index): gpu for gpu in gpus}
    used = [by_index[d] for d in visible if d in by_index] or list(gpus[:gpus_needed])
    need = f"the plan's ESTIMATE is {estimate_gb:.1f} GB per GPU"
    fix = "lower max_seq_len (plan --max-seq-len) or packing, shard the optimizer (sharding_parallel_degree), or use bigger GPUs"
    small = [gpu for gpu in used if gpu.total_mb is not None and gpu.total_mb * 2**20 / 1e9 < estimate_gb]
    if small:
        return Check("gpu memory", FAIL, f"GPU {small[0].index} has {small[0].total_mb * 2**20 / 1e9:.1f} GB in all; {need}", fix)
    if any(gpu.free_mb is None for gpu in used):
        return Check("gpu memory", WARN, f"free memory unknown (no nvidia-smi); {need}", "check with nvidia-smi before training")
    tight = min(used, key=lambda gpu: gpu.free_mb)
    free_gb = tight.free_mb * 2**20 / 1e9
    if free_gb < estimate_gb:
        return Check("gpu memory", WARN, f"GPU {tight.index} has {free_gb:.1f} GB free; {need}",
                     "free the GPU (other processes hold memory: see nvidia-smi), or " + fix)
    return Check("gpu memory", OK, f">= {free_gb:.1f} GB free on each of the {len(used)} GPU(s) the plan uses; {need}")


def _versions_text(versions: dict, paddle: PaddleFacts | None) -> str:
    parts = []
    for key, value in versions.items():
        if value is True:
            parts.append(key)
        elif value is not False and key != "erniekit":  # erniekit's "version" is its source dir
            parts.append(f"{key} {value}")
        if key == "paddlepaddle" and paddle and paddle.version:
            parts[-1] += f" ({'CUDA ' + paddle.cuda if paddle.cuda else 'CPU build'})"
    return ", ".join(parts)


def check_backend(b: BackendFacts, plan_backend: str | None = None) -> Check:
    """A trainer environment: installed, importable, the PaddleOCR-VL stage there, known-good versions."""
    title = backends.get(b.name).title
    name = f"backend {b.name}"
    needed = plan_backend == b.name
    install = (f"`{CLI} backend install {b.name}`" + (" (clones release/v1.4; offline: --source CLONE_OR_TARBALL)" if b.name == "erniekit" else "")
               + ", or the Docker image (docker/), where the trainer is on PATH")
    if b.status == "missing":
        if plan_backend and not needed:
            return Check(name, OK, f"{title} is not installed (this plan trains with {backends.get(plan_backend).title})")
        return Check(name, FAIL if needed else WARN, f"{title} is not installed", install)
    where = f"{b.status} at {b.where}" if b.where else b.status
    if b.error:
        return Check(name, FAIL if needed else WARN, f"{title} ({where}) does not import: {b.error}", f"`{CLI} backend install {b.name} --force`")
    text = f"{title} {where}: {_versions_text(b.versions, b.paddle)}"
    if b.name == "erniekit" and b.versions.get("OCR-VL-SFT stage") is False:
        return Check(name, FAIL if needed else WARN, f"{text}: no OCR-VL-SFT stage (ERNIEKit < 1.4)",
                     f"`{CLI} backend install erniekit --force` (release/v1.4 or later)")
    if b.name == "erniekit" and version_tuple(b.versions.get("paddleformers"))[:2] != (0, 3):
        return Check(name, WARN, f"{text}: ERNIEKit v1.4 was written for paddleformers 0.3.2 (its requirements leave it unpinned)",
                     "pip install paddleformers==0.3.2 in that environment")
    if b.name == "paddleformers" and version_tuple(b.versions.get("paddleformers")) < (1, 2):
        return Check(name, WARN, f"{text}: this tool's PaddleFormers path is built for 1.2", "pip install paddleformers==1.2.0 in that environment")
    if b.name == "paddleformers" and version_tuple(b.versions.get("safetensors")) >= (0, 8):
        return Check(name, WARN, f"{text}: safetensors >= 0.8 silently corrupts PaddleFormers' LoRA merge",
                     "pip install 'safetensors<0.8' in that environment")
    if "lock changed" in b.status:
        return Check(name, WARN, f"{text}: built from an older lock file", f"`{CLI} backend install {b.name} --force`")
    return Check(name, OK, text)


def check_paddleocr(version: str | None) -> Check:
    if version is None:
        return Check("paddleocr", WARN, "not installed: predict, eval and `paddleocr doc_parser` need it", INFER_PACKAGES)
    if version_tuple(version) < (3, 3):
        return Check("paddleocr", WARN, f"{version}: PaddleOCR-VL arrived in paddleocr 3.3", INFER_PACKAGES)
    return Check("paddleocr", OK, version)


def check_paddlex(version: str | None, supported: list[str], state: str | None) -> Check:
    """paddlex against the versions the custom-prompt patch was checked on, and the patch's state."""
    if version is None:
        return Check("paddlex", WARN, "not installed: predict, export verification and `patch` need it", INFER_PACKAGES)
    span = f"{supported[0]}..{supported[-1]}"
    state_text = f"; pipeline {state}" if state else ""
    if version not in supported:
        return Check("paddlex", WARN, f"{version} is not among the versions the custom-prompt patch was checked on ({span}){state_text}",
                     f"pip install paddlex==3.7.2, or see `{CLI} patch status` (it locates its points structurally)")
    if state and state.split(":")[0] in ("modified", "unsupported"):
        return Check("paddlex", WARN, f"{version}{state_text}", f"`{CLI} patch status` explains; reinstall paddlex to start clean")
    return Check("paddlex", OK, f"{version} (the custom-prompt patch supports {span}){state_text}")


def check_plan(p: PlanFacts) -> Check:
    title = backends.get(p.backend).title
    where = ("one CPU process" if p.device == "cpu" else f"{p.nodes} node(s) x {p.gpus_per_node} GPU(s)"
             + ("; doctor checks this node" if p.nodes > 1 else ""))
    text = f"{p.dir}: {title} on {where}, max_steps {p.max_steps}"
    missing = [f for f in p.train_files if not Path(f).is_file()]
    if missing:
        return Check("plan", FAIL, f"{text}; training data not found: {', '.join(missing)}",
                     "restore the files or re-run `plan` (its prepared data lives in PLAN_DIR/data)")
    return Check("plan", OK, text)


def _missing_weights(m: ModelFacts) -> list[str]:
    if m.weights_error:
        return [m.weights_error]
    return [f"truncated weights: {', '.join(m.truncated)} (an interrupted copy or download?)"] if m.truncated else []


def check_model(m: ModelFacts, purpose: str) -> Check:
    """``purpose`` "train" (a plan's base dir) or "any" (--model: an inference bundle or a training base)."""
    if not m.is_dir:
        return Check("model", FAIL, f"{m.path}: not a directory",
                     "re-run `plan` with --model BASE_DIR" if purpose == "train" else "give a model dir")
    weights = _missing_weights(m)
    base_missing = [n for n in TRAIN_BASE_FILES if n not in m.files]
    problems = weights + ([f"missing {', '.join(base_missing)}"] if base_missing else [])
    size = f"{size_text(m.weights_bytes)} of weights, {count_text(m.params)} parameters"
    if purpose == "any":
        bundle_missing = [n for n in VL_REC_REQUIRED if n not in m.files]
        if not bundle_missing and not weights:
            return Check("model", OK, f"{m.path}: a complete inference bundle ({size}; predict, serve and doc_parser load it)")
        if not problems:
            kind = "a training run's output" if "trainer_state.json" in m.files else "a training base dir"
            return Check("model", WARN, f"{m.path}: {kind} ({size}), not an inference bundle (missing {', '.join(bundle_missing)})",
                         f"`{CLI} export RUN_DIR --base BASE_DIR` writes a bundle predict and doc_parser load")
        return Check("model", FAIL, f"{m.path}: neither an inference bundle nor a training base: {'; '.join(problems)}",
                     "copy the complete released model (PaddleOCR-VL-0.9B, -1.5 or -1.6) or `export` a run")
    if problems:
        return Check("model", FAIL, f"training base {m.path}: {'; '.join(problems)}",
                     "restore the base model's files (config.json, weights, preprocessor_config.json, tokenizer) and re-run `plan`")
    return Check("model", OK, f"training base {m.path}: complete ({size})")


def check_release(r: ReleaseFacts) -> Check:
    """The release the stages will use: the plan's, else the model dir's (refused dirs FAIL, a
    1.5/1.6 dir that does not say which WARNs), and whether the installed paddlex runs it."""
    from paddle_ocrvl_sft import releases

    if r.planned == "":
        return Check("release", WARN, "plan.json records no release (a plan written before releases were detected): "
                     "it was made with v1's template and pixel bounds", f"re-run `{CLI} plan` (it detects the base's release)")
    if r.planned is None and r.name is None:
        if r.ambiguous:
            return Check("release", WARN, r.said, "pass --release to plan/export (a released dir's inference.yml tells them apart)")
        return Check("release", FAIL, r.said, "a bundle: re-export it (`export ... --release R`); a base: restore the "
                     "released files (chat_template.jinja, preprocessor_config.json, inference.yml)")
    name = r.planned or r.name
    release = releases.get(name)
    text = r.said
    if r.planned:
        chosen = "" if r.name == r.planned else f" (--release at plan time; the files say {r.name or 'no single release'})"
        text = f"{name} ({release.title}) recorded in plan.json{chosen}; base {r.model_dir}: {r.evidence or r.said}"
    if r.planned and r.files_changed:
        return Check("release", WARN, text, f"the base's files changed since the plan ({r.planned}): re-run `{CLI} plan`")
    if r.paddlex_releases is not None and name not in r.paddlex_releases:
        fix = f"pip install 'paddlex>={r.first_paddlex}'" if r.first_paddlex else "pip install -U paddlex"
        return Check("release", WARN, f"{text}; paddlex {r.paddlex_version} ships no {release.paddlex_pipeline} pipeline: "
                     f"doc_parser --pipeline_version {release.pipeline_version} and its {release.paddlex_model_name} "
                     "predictor are not there", fix)
    where = (f"; paddlex {r.paddlex_version} runs it (doc_parser --pipeline_version {release.pipeline_version}, "
             f"model {release.paddlex_model_name})") if r.paddlex_releases is not None else ""
    return Check("release", OK, text + where)


def checkpoint_estimate(p: PlanFacts, weights_bytes: int, params: int) -> tuple[int, str]:
    """Bytes the plan's run writes into output_dir (an ESTIMATE) and how it was computed.

    A full checkpoint holds the weights (as stored in the base) plus fp32 master weights and two
    Adam moments (12 bytes per parameter); with save_total_limit the trainer deletes the oldest
    checkpoint only after writing a new one, so limit + 1 exist at the peak. The final weights
    are written once more into output_dir. LoRA checkpoints are counted as one copy of the weights
    each (an upper bound: the adapter and its optimizer state are much smaller).
    """
    if p.save_strategy == "no":
        saves = 0
    elif p.save_strategy == "epoch":
        saves = math.ceil(p.epochs)
    else:
        saves = p.max_steps // max(1, p.save_steps)
    kept = min(saves, p.save_total_limit + 1) if p.save_total_limit else saves
    per = weights_bytes if p.lora else weights_bytes + OPTIMIZER_BYTES_PER_PARAM * params
    what = "weights (LoRA: an upper bound)" if p.lora else f"weights + {OPTIMIZER_BYTES_PER_PARAM} B/param fp32 master + Adam"
    total = kept * per + weights_bytes
    return total, f"{kept} checkpoint(s) x {size_text(per)} ({what}) + {size_text(weights_bytes)} final weights"


def check_disk(d: DiskFacts, needed: int, how: str) -> Check:
    text = f"{size_text(d.free_bytes)} free at {d.measured_at}; the plan writes ≈ {size_text(needed)} to {d.path} (ESTIMATE: {how})"
    if d.free_bytes < needed:
        return Check("disk", FAIL, text, "free space, keep fewer checkpoints (plan ... save_total_limit=2) "
                     "or put output_dir on a bigger disk (plan --output-dir)")
    return Check("disk", OK, text)


def check_data(files: list[str], report=None, error: str | None = None, max_seq_len: int | None = None) -> Check:
    """A ``data validate`` summary (``report``: a ValidationReport); errors FAIL with the command to run."""
    name, command = "data", f"`{CLI} data validate {' '.join(files)}`"
    if error:
        return Check(name, FAIL, error, f"give an existing .jsonl/.json dataset; {command}")
    limit = f" (max_seq_len {max_seq_len})" if max_seq_len else ""
    text = (f"{report.samples} samples: {report.valid} valid, {report.rejected} rejected ({report.errors} errors, "
            f"{report.warnings} warnings); longest {report.max_tokens} tokens{limit}")
    if report.errors or not report.valid:
        return Check(name, FAIL, text, f"{command} lists each error by file and line; --write-clean OUT keeps the good rows")
    if report.warnings:
        return Check(name, WARN, text, f"{command} lists the warnings")
    return Check(name, OK, text)


# --- the whole run -------------------------------------------------------------------------------


def _this_python() -> Check:
    return check_python(tuple(sys.version_info), platform.python_implementation(), platform.system(), platform.machine())


def run_checks(plan_dir: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
               data: list[str] | None = None) -> list[Check]:
    """Gather the facts and judge them, in the order they are printed."""
    from paddle_ocrvl_sft import patch
    from paddle_ocrvl_sft.backends import envs

    if plan_dir is not None and model is not None:
        raise UserError("give --plan or --model, not both (a plan names its own base model)")
    plan = load_plan_facts(plan_dir) if plan_dir is not None else None
    device = plan.device if plan else None
    trainer = envs.resolve(plan.backend, verify=False) if plan else None
    with ThreadPoolExecutor(max_workers=2) as pool:
        here = pool.submit(probe_paddle)
        trainer_envs = probe_backends()
        paddle_here = here.result()
    training = paddle_here
    where = f"this Python ({sys.executable})"
    if trainer and str(trainer.python) != sys.executable:
        env = next(b for b in trainer_envs if b.name == plan.backend)
        training, where = env.paddle or paddle_here, f"the {backends.get(plan.backend).title} environment ({trainer.python})"

    checks = [check_plan(plan)] if plan else []
    checks += [_this_python(), check_paddle(paddle_here)]
    if training.version is not None:
        checks.append(check_cuda(training, device, where))
    gpus = probe_gpus(training if training.gpus else paddle_here)
    gpus_needed = plan.gpus_per_node if plan else 1
    checks.append(check_gpus(gpus, device, gpus_needed))
    if plan and device == "gpu" and gpus.gpus and plan.memory_estimate_gb:
        checks.append(check_gpu_memory(gpus.gpus, plan.memory_estimate_gb, plan.visible_devices, gpus_needed))
    checks += [check_backend(b, plan.backend if plan else None) for b in trainer_envs]
    checks.append(check_paddleocr(package_version("paddleocr")))
    checks.append(check_paddlex(package_version("paddlex"), patch.load_patch()["supported_versions"], patch_state()))

    model_dir = plan.model_dir if plan else model
    facts = probe_model(model_dir) if model_dir is not None else None
    if facts:
        checks.append(check_model(facts, "train" if plan else "any"))
    release = probe_release(model_dir, plan_dir, patch.load_patch()) if facts and facts.is_dir else None
    if release:
        checks.append(check_release(release))
    if plan and facts and facts.is_dir and not facts.weights_error:
        needed, how = checkpoint_estimate(plan, facts.weights_bytes, facts.params)
        checks.append(check_disk(probe_disk(plan.output_dir), needed, how))
    if data:
        checks.append(_data_check(data, model_dir, plan, release and (release.planned or release.name)))
    if plan:
        checks.append(check_agreement(plan.dir, trainer))
    return checks


def check_agreement(plan_dir: str, trainer) -> Check:
    """The prompt agreement check (agreement.py) on the plan, with the trainer's own data code."""
    from paddle_ocrvl_sft import agreement

    name = "prompt agreement"
    if trainer is None:
        return Check(name, WARN, "not checked: the plan's trainer is not installed here (`train` checks before it starts)",
                     "install the trainer (`python -m paddle_ocrvl_sft backend install ...`) and run doctor again")
    try:
        result = agreement.check_plan(plan_dir, trainer_env=trainer)
    except agreement.Disagreement as exc:
        first, where = str(exc).splitlines()[:2]
        return Check(name, FAIL, f"{first} ({where.strip()})", "`plan` again shows both sequences side by side; train with the base "
                     "model's own template and tokenizer (docs/releases.md)")
    except UserError as exc:
        return Check(name, FAIL, " ".join(str(exc).split()), "fix the trainer environment or re-run `plan` (docs/releases.md)")
    return Check(name, OK, f"{result['training']['by']} and {result['inference']['by']} give {result['sample']} the same "
                 f"{result['training']['prompt_tokens']} prompt tokens ({result['training']['image_tokens']} image tokens); "
                 "the loss starts at the answer")


def _data_check(files: list[str], model_dir, plan: PlanFacts | None, release: str | None = None) -> Check:
    """``release``: the plan's or the model's (its template marker in the token counts; tasks it never learnt)."""
    from paddle_ocrvl_sft import releases
    from paddle_ocrvl_sft.data.validate import ValidateOptions, validate_paths
    from paddle_ocrvl_sft.tokens import PixelBounds

    max_seq_len = plan.max_seq_len if plan else None
    try:
        has_processor = model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file()
        bounds = PixelBounds.from_model_dir(model_dir) if has_processor else PixelBounds()
        options = ValidateOptions(max_seq_len=max_seq_len, bounds=bounds, release=releases.get(release) if release else None)
        report = validate_paths(files, options)
    except UserError as exc:
        return check_data(files, error=str(exc))
    return check_data(files, report, max_seq_len=max_seq_len)


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    return f"doctor: {counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL"


def to_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2, ensure_ascii=False)
