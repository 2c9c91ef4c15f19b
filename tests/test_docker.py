import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_entrypoint_forwards_arguments_to_the_cli():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "data", "validate", "/nonexistent.jsonl"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "/nonexistent.jsonl: no such file" in proc.stderr


def test_dockerfile_uses_the_guide_container_and_the_entrypoint():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "paddle:3.2.0-gpu-cuda12.6-cudnn9.5" in text
    assert 'ENTRYPOINT ["/opt/paddle-ocrvl-sft/docker/entrypoint.sh"]' in text
    assert "numpy==1.26.4" in text and "pyarrow==22.0.0" in text


def pins_module():
    """docker/pins.py: the Dockerfile parser and constraints reader the lock script uses."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docker_pins", ROOT / "docker" / "pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_package_the_dockerfile_installs_is_pinned():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = pins_module()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = pins.copied_files(dockerfile)
    # ERNIEKit's requirements/gpu/requirements.txt (tests/data/README.md): what -r and -e /opt/ERNIE install
    ernie = pins.requirement_lines((ROOT / "tests" / "data" / "erniekit_requirements_gpu.txt").read_text())
    assert "paddleformers" in ernie  # unpinned upstream: the reason for the constraints file
    installs = pins.pip_installs(dockerfile)
    assert len(installs) == 5
    unpinned = []
    for args in installs:
        requirements, files, constraints = pins.parse_install(args)
        pinned = {}
        for path in constraints:
            assert path in copied, f"-c {path}: not a file the Dockerfile copies from the repo"
            pinned.update(pins.pins(copied[path].read_text()))  # every line an exact pin
        wanted = requirements + [r for f in files for r in pins.file_requirements(f, ernie)]
        for text in wanted:
            req = Requirement(text)
            exact = len(req.specifier) == 1 and next(iter(req.specifier)).operator == "=="
            if not exact and canonicalize_name(req.name) not in pinned:
                unpinned.append(f"pip install {' '.join(args)}: {text}")
    assert unpinned == []


def test_the_known_good_set_is_pinned_above_the_lock():
    pins = pins_module()
    text = (ROOT / "docker" / "constraints.txt").read_text()
    chosen, resolved = (pins.pins(part) for part in text.split(pins.LOCK_MARKER))
    assert {"paddlepaddle-gpu": "3.2.0", "paddleformers": "0.3.2", "numpy": "1.26.4", "pyarrow": "22.0.0"}.items() <= chosen.items()
    assert not chosen.keys() & resolved.keys() and len(resolved) > 100  # the lock holds the transitive rest


def test_the_parser_sees_what_pip_would_install():
    pins = pins_module()
    text = 'FROM x\nRUN a && python -m pip install -c /c.txt -r /r.txt \\\n  "pkg[extra]>=1" -e /opt/ERNIE; pip install y==2\n'
    assert pins.pip_installs(text) == [["-c", "/c.txt", "-r", "/r.txt", "pkg[extra]>=1", "-e", "/opt/ERNIE"], ["y==2"]]
    assert pins.parse_install(pins.pip_installs(text)[0]) == (["pkg[extra]>=1"], ["/r.txt", "/opt/ERNIE"], ["/c.txt"])
    with pytest.raises(ValueError, match="not an exact pin"):
        pins.pins("numpy>=1.26\n")
