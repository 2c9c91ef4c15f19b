"""backends/envs.py: where ERNIEKit comes from, reinstalls that never remove the working environment,
and resolve() refusing an environment it must not use. External tools are stand-ins here (git, a
trainer's Python); real installs run in tests/test_training_cpu.py's fixture."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from paddle_ocrvl_sft.backends import envs
from paddle_ocrvl_sft.errors import UserError

GIT = """#!/bin/sh
# STAND-IN for git: records its arguments; "checkout" and "clone" lay out an ERNIEKit tree
echo "$@" >> {log}
case "$*" in
  *" checkout "*) tree="$2" ;;
  clone*) for last in "$@"; do :; done; tree="$last" ;;
  *rev-parse*) echo {sha}; exit 0 ;;
  *) exit 0 ;;
esac
mkdir -p "$tree/erniekit/train/ocr_vl_sft" "$tree/.git" && touch "$tree/setup.py"
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


PINNED = "41ab1c571eca884cf92a30ec52c9d1d4876f96f1"  # the vendored ERNIE-develop-41ab1c5.tar.gz's commit


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(envs.HOME_ENV, str(tmp_path / "home"))
    getattr(envs, "_probed", {}).clear()
    yield tmp_path / "home"
    getattr(envs, "_probed", {}).clear()


def test_erniekit_is_fetched_at_the_commit_the_cpu_patches_were_written_for(tmp_path, monkeypatch):
    calls = tmp_path / "git.log"
    executable(tmp_path / "bin" / "git", GIT.format(log=calls, sha=PINNED))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    envs._erniekit_source(None, tmp_path / "src", lambda line: None)
    log = calls.read_text()
    assert f"fetch --quiet --depth 1 https://github.com/PaddlePaddle/ERNIE {PINNED}" in log
    assert "checkout --quiet FETCH_HEAD" in log and "release/v1.4" not in log  # a commit, not a moving branch
    assert envs._erniekit_source(None, tmp_path / "src2", lambda line: None)[1] == PINNED == envs.ERNIEKIT_COMMIT


def test_a_tarballs_commit_is_recorded(tmp_path):
    tarball = tmp_path / "ERNIE.tar.gz"
    with tarfile.open(tarball, "w:gz", pax_headers={"comment": PINNED}) as tar:  # as `git archive` writes it
        for name in ("ERNIE/setup.py", "ERNIE/erniekit/train/ocr_vl_sft/__init__.py"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    tree, commit = envs._erniekit_source(tarball, tmp_path / "src", lambda line: None)
    assert commit == PINNED and (tree / "setup.py").is_file()


@pytest.fixture
def fake_builds(home, monkeypatch):
    """install() with its tools stood in: a 'venv' is a dir with a python script, pip may fail on demand."""
    fail = []

    def make_venv(path, log):
        return executable(path / "bin" / "python", "#!/bin/sh\nexit 0\n")

    def pip_install(python, args, log):
        if fail:
            raise UserError("installing packages failed (exit 1): stand-in pip")

    monkeypatch.setattr(envs, "_make_venv", make_venv)
    monkeypatch.setattr(envs, "_pip_install", pip_install)
    monkeypatch.setattr(envs, "probe", lambda name, python: {"paddleformers": "1.2.0", "PaddleOCR-VL": True})
    return fail


def test_a_reinstall_builds_beside_the_working_environment_and_switches(home, fake_builds):
    first = envs.install("paddleformers", log=lambda line: None)
    fake_builds.append("pip fails")
    with pytest.raises(UserError, match="stand-in pip"):
        envs.install("paddleformers", force=True, log=lambda line: None)
    assert Path(first["python"]).is_file() and envs.read_record("paddleformers") == first  # the working one is untouched
    working = envs.env_root("paddleformers")
    assert Path(first["python"]) == working / "venv" / "bin" / "python" and working.parent.name == "builds"
    assert list(working.parent.iterdir()) == [working]  # the failed build was removed
    fake_builds.clear()
    envs.install("paddleformers", force=True, log=lambda line: None)
    second = envs.env_root("paddleformers")
    assert second != working and working.is_dir()  # the previous build stays for a run that still uses it
    envs.install("paddleformers", force=True, log=lambda line: None)
    assert sorted(p.name for p in second.parent.iterdir()) == sorted([second.name, envs.env_root("paddleformers").name])


def test_a_second_install_waits_for_the_first_instead_of_deleting_its_build(home, fake_builds, monkeypatch):
    """Two `backend install` at once: the second's switch removes every build but its own and the
    previous one, so it must not run while the first is still building (an flock on .install.lock)."""
    import threading

    inside, release, progressed = threading.Event(), threading.Event(), threading.Event()
    stand_in = envs._pip_install

    def pip_install(python, args, log):
        if threading.current_thread().name == "first":
            inside.set()
            assert release.wait(120)
        stand_in(python, args, log)

    monkeypatch.setattr(envs, "_pip_install", pip_install)
    results, lines = {}, []

    def install(label):
        def log(line):
            lines.append(line)
            if "waiting" in line:
                progressed.set()
        try:
            results[label] = envs.install("paddleformers", force=True, log=log)
        except BaseException as exc:  # noqa: BLE001 - asserted on below
            results[label] = exc
        finally:
            progressed.set()

    first = threading.Thread(target=install, args=("first",), name="first")
    first.start()
    assert inside.wait(120)  # the first install is building
    second = threading.Thread(target=install, args=("second",), name="second")
    second.start()
    assert progressed.wait(120)  # the second waits (or, before, ran through)
    release.set()
    first.join(120)
    second.join(120)
    assert isinstance(results["first"], dict) and isinstance(results["second"], dict), results
    assert "paddleformers: another `backend install paddleformers` is running: waiting for it to finish" in lines
    assert Path(results["first"]["python"]).is_file()  # kept as the previous build
    assert Path(results["second"]["python"]).parents[2] == envs.env_root("paddleformers")  # venv/bin/python


def installed(home: Path, name: str, python_text: str, lock: str | None = None) -> Path:
    """An installed environment (laid out as before builds/ existed, which resolve() still reads), with
    ``python_text`` as its Python."""
    root = home / "backends" / name
    python = executable(root / "venv" / "bin" / "python", python_text)
    (root / "backend.json").write_text(json.dumps({"backend": name, "python": str(python), "versions": {},
                                                   "lock_sha256": lock or envs.lock_hash(name)}))
    return python


def test_resolve_refuses_an_environment_built_from_another_lock(home):
    installed(home, "paddleformers", "#!/bin/sh\nexit 0\n", lock="0" * 64)
    with pytest.raises(UserError, match=r"was built from another paddleformers.lock.txt \(the lock changed\): rebuild it "
                                        r"with `python -m paddle_ocrvl_sft backend install paddleformers --force`"):
        envs.resolve("paddleformers")
    assert envs.resolve("paddleformers", verify=False).origin.startswith("installed at")  # doctor and `backend list` still see it


def test_resolve_refuses_an_environment_that_no_longer_imports(home):
    installed(home, "paddleformers", "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'paddle'\" >&2\nexit 1\n")
    with pytest.raises(UserError, match="no longer imports its trainer .*No module named 'paddle'"):
        envs.require("paddleformers")


def test_a_trainer_on_path_of_another_version_is_refused(home, tmp_path, monkeypatch):
    """The Docker image's paddleformers-cli is 0.3.2 (ERNIEKit's): a PaddleFormers plan needs 1.2."""
    python = executable(tmp_path / "image" / "python", "#!/bin/sh\necho 0.3.2\n")  # answers the version query
    executable(tmp_path / "image" / "bin" / "paddleformers-cli", f"#!{python}\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'image' / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(UserError, match=r"is on PATH, but its Python .* has paddleformers 0.3.2, and PaddleFormers here "
                                        r"needs paddleformers >= 1.2"):
        envs.resolve("paddleformers")
    executable(python, "#!/bin/sh\necho 1.2.0\n")
    getattr(envs, "_probed", {}).clear()
    assert envs.resolve("paddleformers").origin == "on PATH"
