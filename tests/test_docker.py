import os
import subprocess
import sys
from pathlib import Path

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
