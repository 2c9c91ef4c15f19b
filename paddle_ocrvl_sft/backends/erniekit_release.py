"""What an ERNIEKit plan for PaddleOCR-VL-1.5/1.6 adds: the assistant-marker fix, reaching every process.

ERNIEKit v1.4 hard-codes the first release's end of the user turn (``"\\nAssistant: "``) in its data
pipeline; :mod:`paddle_ocrvl_sft.backends.erniekit_marker_hook` replaces it, version-checked, with
the release's. The plan writes that hook into ``PLAN_DIR/trainer_hooks/`` as ``sitecustomize.py``
with the release's marker beside it, and the launch environment puts the dir on ``PYTHONPATH``:
``erniekit train`` passes its environment to every GPU worker, the CPU path and the agreement
check's probe start from the same environment, and a copy of the plan dir trains the same way on
another machine (nothing outside PLAN_DIR is referred to). A v1 plan needs none of this.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from paddle_ocrvl_sft import releases
from paddle_ocrvl_sft.backends import erniekit_marker_hook as hook

HOOK_DIR = "trainer_hooks"


def needs_fix(release: str) -> bool:
    return releases.get(release).assistant_marker != releases.get("v1").assistant_marker


def write_hook(plan_dir: Path, release: str) -> str:
    """``PLAN_DIR/trainer_hooks/{sitecustomize.py, erniekit_markers.json}``; returns the plan note."""
    info = releases.get(release)
    target = plan_dir / HOOK_DIR
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hook.__file__, target / "sitecustomize.py")
    (target / hook.SETTINGS).write_text(json.dumps({"release": info.name, "assistant_marker": info.assistant_marker},
                                                   indent=2) + "\n", encoding="utf-8")
    return (f"ERNIEKit: {HOOK_DIR}/sitecustomize.py makes ERNIEKit's data pipeline end the user turn with "
            f"{releases.shown(info.assistant_marker)!r} ({info.title}) instead of its hard-coded "
            f"{releases.shown(releases.get('v1').assistant_marker)!r}; checked against the exact ERNIEKit source it "
            "was written for (another version is refused); PYTHONPATH in the launch env carries it to every process")


def launch_env(plan_dir: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(plan_dir / HOOK_DIR)}
