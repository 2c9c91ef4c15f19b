"""``backend install|list``: one isolated, fully pinned Python environment per trainer.

The two trainers cannot share an environment (ERNIEKit v1.4 needs paddleformers 0.3.2 and
transformers 4.x; PaddleFormers 1.2 needs transformers 5.0-5.3), and neither can share ours
(transformers 5.23 for inference). Each backend gets ``HOME/backends/<name>/``:

- ``venv/``: built with uv when it is available (seconds, hard-linked from uv's cache), else
  ``python -m venv`` + pip; installed from ``requirements/<name>.lock.txt`` (every package pinned,
  compiled from ``<name>.in`` with ``uv pip compile --universal``);
- ``src/ERNIE`` (erniekit): ERNIEKit's source, installed editable (a plain install leaves out
  ``ernie/`` and ``data_processor/``: FACTS), from ``--source`` (a clone or a tarball) or a clone
  of release/v1.4;
- ``backend.json``: what was installed, the lock's hash and the versions found by importing them.

HOME is ``$PADDLE_OCRVL_SFT_HOME`` or ``~/.cache/paddle-ocrvl-sft``. A trainer already on PATH (the
Docker image) is used when no environment is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from paddle_ocrvl_sft import backends
from paddle_ocrvl_sft.errors import UserError

REQUIREMENTS = Path(__file__).parent / "requirements"
# on PYTHONPATH of a trainer's process: backends.cpu is imported from this package there
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
ERNIEKIT_GIT = ("https://github.com/PaddlePaddle/ERNIE", "release/v1.4")
HOME_ENV = "PADDLE_OCRVL_SFT_HOME"
# What each installed environment must import, and the versions worth showing.
PROBE = {
    "erniekit": ("import os, paddle, paddleformers, transformers, erniekit, ernie, data_processor; "
                 "stage = os.path.isdir(os.path.join(os.path.dirname(erniekit.__file__), 'train', 'ocr_vl_sft')); "
                 "print(json.dumps({'paddlepaddle': paddle.__version__, 'paddleformers': paddleformers.__version__, "
                 "'transformers': transformers.__version__, 'erniekit': os.path.dirname(os.path.dirname(erniekit.__file__)), "
                 "'OCR-VL-SFT stage': stage}))"),
    "paddleformers": ("import paddle, paddleformers, transformers, safetensors; "
                      "from paddleformers.transformers import paddleocr_vl; "
                      "print(json.dumps({'paddlepaddle': paddle.__version__, 'paddleformers': paddleformers.__version__, "
                      "'transformers': transformers.__version__, 'safetensors': safetensors.__version__, "
                      "'PaddleOCR-VL': True}))"),
}


@dataclass(frozen=True)
class TrainerEnv:
    """Where a backend's trainer runs: its Python and the dir of its console scripts."""

    backend: str
    python: Path
    bin_dir: Path
    origin: str  # "installed at ..." or "on PATH"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """PATH with the env's scripts first: the launchers start ``python`` from PATH (FACTS "Launch")."""
        base = dict(os.environ if base is None else base)
        base["PATH"] = os.pathsep.join([str(self.bin_dir), base.get("PATH", "")])
        base.pop("PYTHONHOME", None)
        return base


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "paddle-ocrvl-sft")


def env_dir(name: str) -> Path:
    return home() / "backends" / name


def lock_file(name: str) -> Path:
    return REQUIREMENTS / f"{name}.lock.txt"


def lock_hash(name: str) -> str:
    return hashlib.sha256(lock_file(name).read_bytes()).hexdigest()


def read_record(name: str) -> dict | None:
    path = env_dir(name) / "backend.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- install -------------------------------------------------------------------------------------


def install(name: str, *, source: str | os.PathLike | None = None, force: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Build ``HOME/backends/<name>`` from the lock file; returns its backend.json record.

    Built in place (a venv's scripts name their own path, so it cannot be moved afterwards);
    ``backend.json`` is written last and marks a complete install: a failed or interrupted
    install is removed, and a dir without it is never used and is rebuilt. An install with the
    same lock is kept (a no-op) unless ``force`` or a ``source`` is given.
    """
    backends.get(name)  # a clear error for an unknown name
    target = env_dir(name)
    record = read_record(name)
    if record and record.get("lock_sha256") == lock_hash(name) and not force and source is None:
        log(f"{name}: already installed at {target} (same lock); --force reinstalls")
        return record
    if name != "erniekit" and source is not None:
        raise UserError(f"--source: only ERNIEKit is installed from source ({name} comes from PyPI)")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    try:
        python = _make_venv(target / "venv", log)
        _pip_install(python, ["-r", str(lock_file(name))], log)
        if name == "erniekit":
            tree = _erniekit_source(source, target / "src", log)
            _pip_install(python, ["--no-deps", "-e", str(tree)], log)  # the `erniekit` console script
            _add_to_path(python, tree)
        versions = probe(name, python)
        record = {"backend": name, "python": str(python), "lock": lock_file(name).name, "lock_sha256": lock_hash(name),
                  "versions": versions,
                  "source": str(source) if source else (f"{ERNIEKIT_GIT[0]}@{ERNIEKIT_GIT[1]}" if name == "erniekit" else "PyPI")}
        (target / "backend.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    log(f"{name}: installed at {target}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return record


def _uv() -> list[str] | None:
    found = shutil.which("uv")
    if found:
        return [found]
    try:
        import uv  # the PyPI package ships the binary

        return [uv.find_uv_bin()]
    except (ImportError, FileNotFoundError):
        return None


def _run(cmd: list[str], log, what: str) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise UserError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _make_venv(path: Path, log) -> Path:
    uv = _uv()
    if uv:
        _run([*uv, "venv", "--quiet", "--python", sys.executable, str(path)], log, "creating the environment")
    else:
        _run([sys.executable, "-m", "venv", str(path)], log, "creating the environment")
    return path / "bin" / "python"


def _pip_install(python: Path, args: list[str], log) -> None:
    uv = _uv()
    if uv:
        _run([*uv, "pip", "install", "--quiet", "--python", str(python), *args], log, "installing packages")
    else:
        _run([str(python), "-m", "pip", "install", "--quiet", *args], log, "installing packages")


def _erniekit_source(source, dest: Path, log) -> Path:
    """ERNIEKit's tree under ``dest``: copied from a dir, unpacked from a tarball, or cloned."""
    dest.mkdir(parents=True)
    if source is None:
        if not shutil.which("git"):
            raise UserError("ERNIEKit: give --source (a clone or a tarball of PaddlePaddle/ERNIE release/v1.4): git is not installed")
        url, branch = ERNIEKIT_GIT
        _run(["git", "clone", "--quiet", "--depth", "1", "-b", branch, url, str(dest / "ERNIE")], log,
             f"cloning {url} ({branch}); without network access, pass --source DIR|TARBALL")
        return _check_erniekit_tree(dest / "ERNIE")
    source = Path(source)
    if source.is_dir():
        shutil.copytree(source, dest / "ERNIE", ignore=shutil.ignore_patterns(".git", "__pycache__"))
        return _check_erniekit_tree(dest / "ERNIE")
    if source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            tar.extractall(dest, filter="data")  # no absolute paths, no links out of dest
        roots = [p for p in dest.iterdir() if p.is_dir()]
        if len(roots) != 1:
            raise UserError(f"--source {source}: expected one top-level dir in the tarball, found {len(roots)}")
        return _check_erniekit_tree(roots[0])
    raise UserError(f"--source {source}: not a directory or a tarball")


def _check_erniekit_tree(tree: Path) -> Path:
    stage = tree / "erniekit" / "train" / "ocr_vl_sft"
    if not (tree / "setup.py").is_file() or not stage.is_dir():
        raise UserError(f"{tree}: not an ERNIEKit >= 1.4 source tree (no erniekit/train/ocr_vl_sft: the OCR-VL-SFT "
                        "stage ships in release/v1.4 and later)")
    return tree


def _add_to_path(python: Path, tree: Path) -> None:
    """ERNIEKit's editable install maps only the ``erniekit`` package; its trainer also imports the
    top-level ``ernie`` and ``data_processor`` of the same tree: put the tree itself on sys.path."""
    proc = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True)
    (Path(proc.stdout.strip()) / "erniekit-source-tree.pth").write_text(f"{tree}\n", encoding="utf-8")


def probe(name: str, python: Path) -> dict:
    """Import the trainer in its environment and report versions (and that PaddleOCR-VL support is there)."""
    proc = subprocess.run([str(python), "-c", "import json; " + PROBE[name]], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise UserError(f"{name}: the environment does not import its trainer:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- finding a trainer ---------------------------------------------------------------------------


def resolve(name: str) -> TrainerEnv | None:
    """The installed environment of ``name``, else its launcher on PATH (with that script's Python)."""
    trainer = backends.get(name)
    python = env_dir(name) / "venv" / "bin" / "python"
    if python.is_file() and read_record(name):
        return TrainerEnv(name, python, python.parent, f"installed at {env_dir(name)}")
    script = shutil.which(trainer.executable)
    if script:
        return TrainerEnv(name, Path(_shebang_python(Path(script)) or sys.executable), Path(script).parent, "on PATH")
    return None


def _shebang_python(script: Path) -> str | None:
    try:
        first = script.read_bytes()[:200].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return None
    return first[2:].strip().split()[0] if first.startswith("#!") and "python" in first else None


def require(name: str) -> TrainerEnv:
    found = resolve(name)
    if found is None:
        source = " [--source ERNIE_CLONE_OR_TARBALL]" if name == "erniekit" else ""
        raise UserError(f"{backends.get(name).title} is not installed: run `python -m paddle_ocrvl_sft backend install {name}{source}` "
                        f"(or put `{backends.get(name).executable}` on PATH, as in the Docker image)")
    return found


def listing() -> list[dict]:
    """One row per backend: installed where, versions, or on PATH, or missing."""
    rows = []
    for name in backends.NAMES:
        record = read_record(name)
        found = resolve(name)
        row = {"backend": name, "status": "missing", "where": None, "versions": {}}
        if record:
            stale = record.get("lock_sha256") != lock_hash(name)
            row.update(status="installed (lock changed: reinstall)" if stale else "installed", where=str(env_dir(name)),
                       versions=record.get("versions", {}))
        elif found:
            row.update(status="on PATH", where=str(found.bin_dir))
        rows.append(row)
    return rows
