import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_uses_the_guide_container_and_the_cli_as_entrypoint():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "paddle:3.2.0-gpu-cuda12.6-cudnn9.5" in text
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", text, re.M)
    assert json.loads(entrypoint) == ["python", "-m", "paddle_ocrvl_sft"]
    assert (ROOT / "paddle_ocrvl_sft" / "__main__.py").is_file()  # the module the entrypoint runs
    proc = subprocess.run([sys.executable, "-m", "paddle_ocrvl_sft", "data", "validate", "/nonexistent.jsonl"],
                          capture_output=True, text=True)  # what `docker run IMAGE data validate ...` runs inside
    assert proc.returncode == 2 and "/nonexistent.jsonl: no such file" in proc.stderr
    assert "numpy==1.26.4" in text and "pyarrow==22.0.0" in text


def compose() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def expand(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR} / ${VAR:-default} interpolation, with the defaults unless env sets the variable."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""), value)


def test_compose_has_train_serve_tensorboard_with_volumes_and_loopback_ports():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"train", "serve", "tensorboard"}
    assert "paddle-ocrvl-sft-cache" in spec["volumes"]
    for name, service in services.items():
        assert "${PWD}:${PWD}" in service["volumes"] and service["working_dir"] == "${PWD}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} must not publish on every interface"
    assert services["train"]["ipc"] == "host" and services["train"]["shm_size"]
    assert services["train"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("service", ["train", "serve"])
def test_compose_commands_are_valid_cli_invocations(service):
    """Services without their own entrypoint run `python -m paddle_ocrvl_sft <command>`: parse it."""
    from paddle_ocrvl_sft.cli import build_parser

    spec = compose()["services"][service]
    assert "entrypoint" not in spec
    argv = [expand(part, {}) for part in spec["command"]]
    args = build_parser().parse_args(argv)  # argparse exits (SystemExit) on anything invalid
    assert args.command == service
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--no-such-option"])  # the check can fail


def test_tensorboard_service_runs_tensorboard_from_the_image():
    spec = compose()["services"]["tensorboard"]
    assert spec["entrypoint"] == ["tensorboard"] and "--logdir" in spec["command"]
    assert re.search(r"^\s*&& python -m pip install -c /opt/constraints.txt tensorboard", (ROOT / "docker" / "Dockerfile").read_text(), re.M)


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


def test_the_image_pins_the_erniekit_commit_the_environments_use():
    """Not a moving branch: the same commit `backend install erniekit` fetches and the CPU patches were written for."""
    from paddle_ocrvl_sft.backends import envs

    text = (ROOT / "docker" / "Dockerfile").read_text()
    (commit,) = re.findall(r"^ARG ERNIE_COMMIT=([0-9a-f]{40})$", text, re.M)
    assert commit == envs.ERNIEKIT_COMMIT
    assert "fetch -q --depth 1 https://github.com/PaddlePaddle/ERNIE ${ERNIE_COMMIT}" in text and " -b " not in text
