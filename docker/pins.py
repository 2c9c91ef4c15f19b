"""What docker/Dockerfile installs with pip, and the constraints file that pins all of it.

    python docker/pins.py lock     # re-resolve the lower part of docker/constraints.txt

docker/constraints.txt has two parts. Above the LOCK_MARKER line: the chosen pins, the known-good
set (FACTS "ERNIEKit": paddlepaddle-gpu 3.2.0, paddleformers 0.3.2, numpy 1.26.4, pyarrow 22.0.0)
and one version for every other package the Dockerfile names. Below it: every other package those
installs pull in, as pip resolves them under the chosen pins for the image's Python (CPython 3.10,
manylinux x86_64) from the registry, without building the image. The Dockerfile passes the file to
every ``pip install`` with ``-c``; tests/test_docker.py checks statically that every package the
Dockerfile names is pinned (this module's parser is the one it uses).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKER = Path(__file__).resolve().parent
ROOT = DOCKER.parent
DOCKERFILE = DOCKER / "Dockerfile"
CONSTRAINTS = DOCKER / "constraints.txt"
LOCK_MARKER = "# --- resolved by `python docker/pins.py lock`; do not edit below ---"
# Installed by path in the image; what pip installs for them (ERNIEKit's setup.py installs its
# requirements/gpu/requirements.txt; a snapshot of it is tests/data/erniekit_requirements_gpu.txt).
ERNIE_DIR, ERNIE_REQUIREMENTS = "/opt/ERNIE", "/opt/ERNIE/requirements/gpu/requirements.txt"
PROJECT_DIR = "/opt/paddle-ocrvl-sft"
# Not resolvable for another platform: an sdist only (GPUtil), or not on PyPI (Paddle's own index).
UNRESOLVABLE = {"gputil", "paddlepaddle-gpu"}
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{v}_x86_64" for v in (17, 24, 27, 28, 31, 34, 35)]


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in the RUN instructions, in order."""
    text = dockerfile.replace("\\\n", " ")
    installs = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in re.split(r"&&|;", line[4:]):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i] == "pip" and words[i + 1] == "install":
                    installs.append(words[i + 2 :])
    return installs


def copied_files(dockerfile: str) -> dict[str, Path]:
    """Container path -> repo file for the single-file COPY instructions."""
    found = {}
    for src, dst in re.findall(r"^COPY (\S+) (\S+)$", dockerfile, re.MULTILINE):
        if (ROOT / src).is_file():
            found[dst] = ROOT / src
    return found


def parse_install(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(requirement specifiers, ``-r`` files, ``-c`` files) of one ``pip install``; ``-e DIR`` and
    a bare local path count as requirement files of that project."""
    requirements, files, constraints = [], [], []
    words = iter(args)
    for word in words:
        if word in ("-c", "--constraint"):
            constraints.append(next(words))
        elif word in ("-r", "--requirement", "-e", "--editable"):
            files.append(next(words))
        elif word.startswith("/"):
            files.append(word)
        elif not word.startswith("-"):
            requirements.append(word)
    return requirements, files, constraints


def project_requirements(setup_py: Path = ROOT / "setup.py") -> list[str]:
    """``install_requires`` of this project's setup.py (read, not run)."""
    for node in ast.walk(ast.parse(setup_py.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return ast.literal_eval(node.value)
    raise ValueError(f"{setup_py}: no install_requires")


def requirement_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def file_requirements(path: str, ernie_requirements: list[str]) -> list[str]:
    """What pip installs for a ``-r`` file or a project path of the Dockerfile."""
    if path in (ERNIE_DIR, ERNIE_REQUIREMENTS):
        return ernie_requirements
    if path == PROJECT_DIR:
        return project_requirements()
    raise ValueError(f"docker/pins.py does not know what {path} installs: teach file_requirements")


def pins(text: str) -> dict[str, str]:
    """name -> version of a constraints file; anything but ``name==version`` is an error."""
    found = {}
    for line in requirement_lines(text):
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one
        if spec.operator != "==" or "*" in spec.version or req.marker:
            raise ValueError(f"not an exact pin: {line}")
        found[canonicalize_name(req.name)] = spec.version
    return found


def lock(ernie_requirements: list[str], python: str = "3.10") -> str:
    """Resolve everything the Dockerfile installs under the chosen pins; the new constraints text."""
    text = CONSTRAINTS.read_text(encoding="utf-8")
    chosen_part = text.split(LOCK_MARKER)[0].rstrip("\n") + "\n"
    chosen = pins(chosen_part)
    wanted = []
    for args in pip_installs(DOCKERFILE.read_text(encoding="utf-8")):
        requirements, files, _ = parse_install(args)
        wanted += requirements + [r for f in files for r in file_requirements(f, ernie_requirements)]
    wanted = [w for w in wanted if canonicalize_name(Requirement(w).name) not in UNRESOLVABLE]
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp, "c.txt")
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in chosen.items() if n not in UNRESOLVABLE))
        report = Path(tmp, "report.json")
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--only-binary=:all:", "--python-version", python, *platforms, "--target", str(Path(tmp, "t")),
                        "--report", str(report), "-c", str(constraints), *wanted], check=True)
        resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                    for item in json.loads(report.read_text())["install"]}
    mismatched = {n: (v, resolved[n]) for n, v in chosen.items() if n in resolved and resolved[n] != v}
    if mismatched:
        raise SystemExit(f"pip resolved other versions than the chosen pins: {mismatched}")
    rest = sorted((n, v) for n, v in resolved.items() if n not in chosen)
    return chosen_part + "\n" + LOCK_MARKER + "\n" + "".join(f"{n}=={v}\n" for n, v in rest)


def main() -> int:
    if sys.argv[1:] != ["lock"]:
        print(__doc__)
        return 2
    snapshot = ROOT / "tests" / "data" / "erniekit_requirements_gpu.txt"
    CONSTRAINTS.write_text(lock(requirement_lines(snapshot.read_text(encoding="utf-8"))), encoding="utf-8")
    print(f"wrote {CONSTRAINTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
