"""``backend install|list``: one isolated, fully pinned Python environment per trainer.

The two trainers cannot share an environment (ERNIEKit v1.4 needs paddleformers 0.3.2 and
transformers 4.x; PaddleFormers 1.2 needs transformers 5.0-5.3), and neither can share ours
(transformers 5.23 for inference). Each backend gets ``HOME/backends/<name>/``:

``builds/<id>/`` (``current`` is a symlink to the one in use; a reinstall builds the next one
beside it and then switches the link, so the working environment is never deleted first; the
previous build is kept until the next install, for a run that still uses it), each with:

- ``venv/``: built with uv when it is available (seconds, hard-linked from uv's cache), else
  ``python -m venv`` + pip; installed from ``requirements/<name>.lock.txt`` (every package pinned,
  compiled from ``<name>.in`` with ``uv pip compile --universal``);
- ``src/ERNIE`` (erniekit): ERNIEKit's source, installed editable (a plain install leaves out
  ``ernie/`` and ``data_processor/``: FACTS), from ``--source`` (a clone or a tarball) or fetched
  at commit :data:`ERNIEKIT_COMMIT` (the release/v1.4-era tree the CPU patches were written for);
- ``backend.json``: what was installed, the lock's hash, ERNIEKit's commit and the versions found
  by importing them.

HOME is ``$PADDLE_OCRVL_SFT_HOME`` or ``~/.cache/paddle-ocrvl-sft``. A trainer already on PATH (the
Docker image) is used when no environment is installed, if it is a version this tool's backend
was written for. :func:`resolve` refuses an installed environment built from another lock or
that no longer imports its trainer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from paddle_ocrvl_sft import backends
from paddle_ocrvl_sft.errors import UserError

REQUIREMENTS = Path(__file__).parent / "requirements"
PACKAGE = Path(__file__).resolve().parents[1]  # paddle_ocrvl_sft/
PACKAGE_PARENT = PACKAGE.parent  # the checkout (editable install: its git state goes into run records)
ERNIEKIT_GIT = ("https://github.com/PaddlePaddle/ERNIE", "release/v1.4")
# The commit of ERNIEKit the CPU patches (backends/cpu/erniekit.py) were written for: develop at
# 41ab1c5 (2025-10-28, the v1.4 docs/config PRs; shared/vendor/ERNIE-develop-41ab1c5.tar.gz).
ERNIEKIT_COMMIT = "41ab1c571eca884cf92a30ec52c9d1d4876f96f1"
HOME_ENV = "PADDLE_OCRVL_SFT_HOME"
# What each installed environment must import, and the versions worth showing.
PROBE = {
    "erniekit": ("import os, paddle, paddleformers, transformers, erniekit, ernie, data_processor; "
                 "stage = os.path.isdir(os.path.join(os.path.dirname(erniekit.__file__), 'train', 'ocr_vl_sft')); "
                 "print(json.dumps({'paddlepaddle': paddle.__version__, 'paddleformers': paddleformers.__version__, "
                 "'transformers': transformers.__version__, 'erniekit': os.path.dirname(os.path.dirname(erniekit.__file__)), "
                 "'OCR-VL-SFT stage': stage}))"),
    "paddleformers": ("import importlib.util, paddle, paddleformers, transformers, safetensors; "
                      "print(json.dumps({'paddlepaddle': paddle.__version__, 'paddleformers': paddleformers.__version__, "
                      "'transformers': transformers.__version__, 'safetensors': safetensors.__version__, "
                      "'PaddleOCR-VL': importlib.util.find_spec('paddleformers.transformers.paddleocr_vl') is not None}))"),
}
# The trainer versions each backend was written for: (package, lowest, highest excluded)
SUPPORTED = {"erniekit": ("paddleformers", (0, 3), (0, 4)), "paddleformers": ("paddleformers", (1, 2), None)}


@dataclass(frozen=True)
class TrainerEnv:
    """Where a backend's trainer runs: its Python and the dir of its console scripts."""

    backend: str
    python: Path
    bin_dir: Path
    origin: str  # "installed at ..." or "on PATH"
    note: str = ""  # what could not be checked about it

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """PATH with the env's scripts first: the launchers start ``python`` from PATH (FACTS "Launch")."""
        base = dict(os.environ if base is None else base)
        base["PATH"] = os.pathsep.join([str(self.bin_dir), base.get("PATH", "")])
        base.pop("PYTHONHOME", None)
        return base


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "paddle-ocrvl-sft")


def env_dir(name: str) -> Path:
    """``HOME/backends/<name>``: its builds and the ``current`` link (the path never changes)."""
    return home() / "backends" / name


def env_root(name: str) -> Path:
    """The build in use (``current`` resolved: a run keeps the build it started with across a
    reinstall), or ``env_dir`` itself for an environment installed before builds existed."""
    current = env_dir(name) / "current"
    return current.resolve() if current.is_symlink() else env_dir(name)


def env_python(name: str) -> Path:
    """The Python of the build in use."""
    return env_root(name) / "venv" / "bin" / "python"


def lock_file(name: str) -> Path:
    return REQUIREMENTS / f"{name}.lock.txt"


def lock_hash(name: str) -> str:
    return hashlib.sha256(lock_file(name).read_bytes()).hexdigest()


def read_record(name: str) -> dict | None:
    path = env_root(name) / "backend.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def project_path() -> Path:
    """A dir holding only this package (a link to it), for a trainer's PYTHONPATH.

    The trainer imports ``paddle_ocrvl_sft.backends.cpu`` from it and nothing else of this
    environment: the package's parent dir is the checkout for an editable install, but a regular
    install's site-packages, whose transformers and safetensors would shadow the trainer's pins.
    """
    import zlib

    where = home() / "pythonpath" / f"{zlib.crc32(str(PACKAGE).encode()):08x}"  # one per installed copy of the package
    link = where / PACKAGE.name
    if not (link.is_symlink() and link.resolve() == PACKAGE):
        where.mkdir(parents=True, exist_ok=True)
        tmp = where / f".{PACKAGE.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(PACKAGE, tmp)
        os.replace(tmp, link)
    return where


# --- install -------------------------------------------------------------------------------------


def install(name: str, *, source: str | os.PathLike | None = None, force: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Build a new ``HOME/backends/<name>/builds/<id>`` from the lock file and switch ``current`` to it;
    returns its backend.json record.

    Built in place (a venv's scripts name their own path, so it cannot be moved afterwards) BESIDE
    the build in use, which keeps working until the switch: a failed or interrupted install leaves
    it as it was. ``backend.json`` is written last and marks a complete build. An install with the
    same lock that still imports its trainer is kept (a no-op) unless ``force`` or a ``source`` is given.
    Two installs of one backend run one after the other (:func:`_install_lock`).
    """
    backends.get(name)  # a clear error for an unknown name
    if name != "erniekit" and source is not None:
        raise UserError(f"--source: only ERNIEKit is installed from source ({name} comes from PyPI)")
    target = env_dir(name)
    with _install_lock(target, name, log):
        return _install(name, target, source, force, log)


@contextlib.contextmanager
def _install_lock(target: Path, name: str, log: Callable[[str], None]):
    """An ``flock`` on ``target/.install.lock`` for the whole install: a second install of the same backend
    waits for the first, whose build in progress its switch would otherwise delete (``_switch`` removes
    every build but the new and the previous one). The kernel releases it when the holder dies."""
    target.mkdir(parents=True, exist_ok=True)
    fd = os.open(target / ".install.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{name}: another `backend install {name}` is running: waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _install(name: str, target: Path, source, force: bool, log: Callable[[str], None]) -> dict:
    record = read_record(name)
    if record and not force and source is None:
        problem = installed_problem(name, record)
        if problem is None:
            log(f"{name}: already installed at {env_root(name)} (same lock); --force reinstalls")
            return record
        log(f"{name}: the installed environment {problem}: building a new one")
    build = _new_build_dir(target / "builds")
    try:
        python = _make_venv(build / "venv", log)
        _pip_install(python, ["-r", str(lock_file(name))], log)
        commit = None
        if name == "erniekit":
            tree, commit = _erniekit_source(source, build / "src", log)
            _pip_install(python, ["--no-deps", "-e", str(tree)], log)  # the `erniekit` console script
            _add_to_path(python, tree)
            if commit != ERNIEKIT_COMMIT:
                log(f"note: ERNIEKit at commit {commit or 'unknown'}, not {ERNIEKIT_COMMIT[:7]}: the CPU patches were written "
                    "for that tree and refuse any other code they patch; GPU training runs it as it is")
        versions = probe(name, python)
        record = {"backend": name, "python": str(python), "lock": lock_file(name).name, "lock_sha256": lock_hash(name),
                  "versions": versions,
                  "source": str(Path(source).resolve()) if source else (f"{ERNIEKIT_GIT[0]}@{ERNIEKIT_COMMIT}" if name == "erniekit" else "PyPI")}
        if name == "erniekit":
            record["erniekit_commit"] = commit
        (build / "backend.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _switch(target, build)
    log(f"{name}: installed at {build}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return record


def _new_build_dir(builds: Path) -> Path:
    """``builds/<time>-<pid>[-n]``, created (never one that exists: two installs may share a second)."""
    builds.mkdir(parents=True, exist_ok=True)
    stem, n = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", 1
    while True:
        path = builds / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def _switch(target: Path, build: Path) -> None:
    """Point ``target/current`` at ``build`` (one rename), then remove what is neither it nor the
    build it replaced (kept for a run that may still use it); an install from before builds
    existed (venv/ and backend.json directly in ``target``) is removed only now."""
    current = target / "current"
    previous = current.resolve() if current.is_symlink() else None
    tmp = target / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(build.relative_to(target), tmp)
    os.replace(tmp, current)
    _probed.clear()
    for old in (target / "builds").iterdir():
        if old.resolve() not in (build.resolve(), previous):
            shutil.rmtree(old, ignore_errors=True)
    for name in ("venv", "src", "backend.json"):  # the layout before builds/
        path = target / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


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


def _erniekit_source(source, dest: Path, log) -> tuple[Path, str | None]:
    """ERNIEKit's tree under ``dest`` and its commit (None when unknown): fetched at
    :data:`ERNIEKIT_COMMIT`, copied from a dir, or unpacked from a tarball."""
    dest.mkdir(parents=True)
    if source is None:
        if not shutil.which("git"):
            raise UserError("ERNIEKit: give --source (a clone or a tarball of PaddlePaddle/ERNIE release/v1.4): git is not installed")
        url, tree = ERNIEKIT_GIT[0], dest / "ERNIE"
        why = f"fetching {url} at {ERNIEKIT_COMMIT[:7]}; without network access, pass --source DIR|TARBALL"
        _run(["git", "init", "--quiet", str(tree)], log, why)
        _run(["git", "-C", str(tree), "fetch", "--quiet", "--depth", "1", url, ERNIEKIT_COMMIT], log, why)
        _run(["git", "-C", str(tree), "checkout", "--quiet", "FETCH_HEAD"], log, why)
        return _check_erniekit_tree(tree), _git_commit(tree)
    source = Path(source)
    if source.is_dir():
        commit = _git_commit(source)
        shutil.copytree(source, dest / "ERNIE", ignore=shutil.ignore_patterns(".git", "__pycache__"))
        return _check_erniekit_tree(dest / "ERNIE"), commit
    if source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            commit = tar.pax_headers.get("comment")  # `git archive` (and GitHub's tarballs) record the commit here
            tar.extractall(dest, filter="data")  # no absolute paths, no links out of dest
        roots = [p for p in dest.iterdir() if p.is_dir()]
        if len(roots) != 1:
            raise UserError(f"--source {source}: expected one top-level dir in the tarball, found {len(roots)}")
        return _check_erniekit_tree(roots[0]), commit if commit and len(commit) == 40 else None
    raise UserError(f"--source {source}: not a directory or a tarball")


def _git_commit(tree: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and len(commit) == 40 and (tree / ".git").exists() else None


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


_probed: dict[tuple[str, str], dict | str] = {}  # (backend, python) -> versions, or why it does not import


def probe_once(name: str, python: Path) -> dict | str:
    """:func:`probe`, once per process and Python: the versions, or why the trainer does not import."""
    key = (name, str(python))
    if key not in _probed:
        try:
            _probed[key] = probe(name, python)
        except (UserError, OSError, ValueError) as exc:
            _probed[key] = str(exc).splitlines()[-1]
    return _probed[key]


def version_problem(name: str, versions: dict) -> str | None:
    """Why a trainer's versions are not what this tool's backend was written for (None: they are)."""
    package, low, high = SUPPORTED[name]
    found = tuple(int(p) for p in str(versions.get(package, "0")).split(".")[:2] if p.isdigit())
    if found < low or (high is not None and found >= high):
        want = f">= {'.'.join(map(str, low))}" + (f", < {'.'.join(map(str, high))}" if high else "")
        return f"has {package} {versions.get(package)}, and {backends.get(name).title} here needs {package} {want}"
    if name == "paddleformers" and versions.get("PaddleOCR-VL") is False:
        return f"has {package} {versions.get(package)} without PaddleOCR-VL (paddleformers.transformers.paddleocr_vl)"
    return None


def installed_problem(name: str, record: dict) -> str | None:
    """Why the installed environment of ``name`` must not be used (None: it is fine): built from
    another lock, or its trainer no longer imports."""
    if record.get("lock_sha256") != lock_hash(name):
        return f"was built from another {lock_file(name).name} (the lock changed)"
    python = env_python(name)
    if not python.is_file():
        return f"has no {python}"
    found = probe_once(name, python)
    return f"no longer imports its trainer ({found})" if isinstance(found, str) else version_problem(name, found)


# --- finding a trainer ---------------------------------------------------------------------------


def resolve(name: str, verify: bool = True) -> TrainerEnv | None:
    """The installed environment of ``name``, else its launcher on PATH (with that script's Python).

    ``verify``: an installed environment built from another lock or that no longer imports its
    trainer, or a trainer on PATH of another version than the backend was written for (the Docker
    image's paddleformers 0.3.2 for a PaddleFormers plan), is refused (UserError) instead of used.
    """
    trainer = backends.get(name)
    root = env_root(name)
    python = root / "venv" / "bin" / "python"
    record = read_record(name)
    if python.is_file() and record:
        problem = installed_problem(name, record) if verify else None
        if problem:
            raise UserError(f"{trainer.title} environment {root} {problem}: rebuild it with "
                            f"`python -m paddle_ocrvl_sft backend install {name} --force`")
        return TrainerEnv(name, python, python.parent, f"installed at {root}")
    script = shutil.which(trainer.executable)
    if script:
        found = TrainerEnv(name, Path(_shebang_python(Path(script)) or sys.executable), Path(script).parent, "on PATH")
        if verify:
            package = SUPPORTED[name][0]
            versions = {package: distribution_version(found.python, package)}
            problem = version_problem(name, versions) if versions[package] else None
            if problem:
                raise UserError(f"{trainer.title}: `{script}` is on PATH, but its Python ({found.python}) {problem}; install "
                                f"the backend's own environment: `python -m paddle_ocrvl_sft backend install {name}`")
            if not versions[package]:
                found = TrainerEnv(name, found.python, found.bin_dir, found.origin,
                                   f"`{script}` is on PATH; its Python has no {package} distribution, so its version is not checked")
        return found
    return None


def distribution_version(python: Path, package: str) -> str | None:
    """The installed version of ``package`` in another Python (its metadata: nothing is imported)."""
    code = (f"import importlib.metadata as m\ntry:\n    print(m.version({package!r}))\n"
            "except m.PackageNotFoundError:\n    print('')")
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


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
        found = resolve(name, verify=False)
        row = {"backend": name, "status": "missing", "where": None, "versions": {}}
        if record:
            stale = record.get("lock_sha256") != lock_hash(name)
            row.update(status="installed (lock changed: reinstall)" if stale else "installed", where=str(env_root(name)),
                       versions=record.get("versions", {}))
        elif found:
            row.update(status="on PATH", where=str(found.bin_dir))
        rows.append(row)
    return rows
