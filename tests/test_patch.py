"""``patch status|apply|revert`` against the REAL installed paddlex pipeline code, on copies.

The installed ``.venv`` paddlex is never modified: every test patches a copy under tmp_path, and
an autouse fixture checks the installed file's hash after each test.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from paddle_ocrvl_sft import patch as px
from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS

ROOT = Path(__file__).resolve().parent.parent
PATCH = px.load_patch()
INSTALLED = px.find_target()
KIE = 'OCR:{"发票号码": "", "Items": [], "FORMULA_ID": ""}'


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def installed_paddlex_untouched():
    before = _sha(INSTALLED.path)
    yield
    assert _sha(INSTALLED.path) == before, "a test modified the installed paddlex"


@pytest.fixture
def copy(tmp_path) -> px.Target:
    """The installed pipeline package (and a dist-info naming its version) copied into tmp_path."""
    rel = Path(PATCH["target"]).parent
    ignore = shutil.ignore_patterns("__pycache__", "*.orig", "*" + px.RECORD_SUFFIX)
    shutil.copytree(INSTALLED.path.parent, tmp_path / rel, ignore=ignore)
    (tmp_path / f"paddlex-{INSTALLED.version}.dist-info").mkdir()
    (tmp_path / rel / "pipeline.py").write_bytes(_stock_bytes())
    return px.find_target(tmp_path)


def _stock_bytes() -> bytes:
    """The installed file, or its recorded original if someone patched the shared venv."""
    st = px.status(INSTALLED)
    if st.state == px.PATCHED:
        return (INSTALLED.path.parent / st.record["backup"]).read_bytes()
    return INSTALLED.path.read_bytes()


def _listing(target: px.Target) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in target.path.parent.iterdir() if p.is_file()}


def test_finds_the_installed_paddlex_without_importing_it():
    assert INSTALLED.path.is_file() and INSTALLED.path.name == "pipeline.py"
    assert ".venv" in str(INSTALLED.path) or "site-packages" in str(INSTALLED.path)
    from importlib.metadata import version

    assert INSTALLED.version == version("paddlex")
    code = "import sys; from paddle_ocrvl_sft import patch; patch.find_target(); print('paddlex' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_installed_version_is_in_the_checked_list():
    checked = PATCH["checked"][INSTALLED.version]
    assert checked["original_sha256"] == hashlib.sha256(_stock_bytes()).hexdigest()
    assert INSTALLED.version in PATCH["supported_versions"]


def test_status_apply_apply_revert_is_byte_exact(copy):
    original = copy.path.read_bytes()
    os.chmod(copy.path, 0o640)
    assert px.status(copy).state == px.UNPATCHED

    first = px.apply(copy)
    assert first.state == px.PATCHED and first.patch_version == PATCH["version"]
    patched = copy.path.read_bytes()
    assert patched != original
    assert (copy.path.parent / first.record["backup"]).read_bytes() == original
    assert json.loads(copy.record_path.read_text())["patched_sha256"] == hashlib.sha256(patched).hexdigest()
    assert copy.path.stat().st_mode & 0o777 == 0o640

    listing, mtime = _listing(copy), copy.path.stat().st_mtime_ns
    second = px.apply(copy)
    assert "already patched" in second.message
    assert _listing(copy) == listing and copy.path.stat().st_mtime_ns == mtime  # nothing written

    st = px.status(copy)
    assert (st.state, st.patch_version) == (px.PATCHED, PATCH["version"])

    assert px.revert(copy).state == px.UNPATCHED
    assert copy.path.read_bytes() == original
    assert sorted(p.name for p in copy.path.parent.iterdir() if p.name.startswith("pipeline.py")) == ["pipeline.py"]
    assert copy.path.stat().st_mode & 0o777 == 0o640
    assert px.revert(copy).message.startswith("not patched")


def test_patch_changes_only_the_three_points():
    source = _stock_bytes().decode("utf-8")
    patched = px.apply_to_source(source, PATCH)
    matcher = difflib.SequenceMatcher(None, source.splitlines(), patched.splitlines())
    ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    assert [op[0] for op in ops] == ["replace"] * 3
    changed = [line for op in ops for line in patched.splitlines()[op[3] : op[4]]]
    assert sum(px.marker(PATCH) in line for line in changed) == 3
    assert any(line.strip() == 'text_prompt = block_label' for line in changed)
    assert px.locate(source, PATCH)  # the stock file has every point exactly once


def test_revert_after_a_manual_edit_refuses_and_loses_nothing(copy):
    original = copy.path.read_bytes()
    record = px.apply(copy).record
    edited = copy.path.read_bytes() + b"# a colleague's hotfix\n"
    copy.path.write_bytes(edited)

    st = px.status(copy)
    assert st.state == px.MODIFIED and "modified by someone else" in st.message
    with pytest.raises(px.UserError) as err:
        px.revert(copy)
    message = str(err.value)
    assert "modified by someone else" in message and "nothing is lost" in message and record["backup"] in message
    assert copy.path.read_bytes() == edited
    assert (copy.path.parent / record["backup"]).read_bytes() == original
    with pytest.raises(px.UserError, match="refusing to patch"):
        px.apply(copy)
    assert copy.path.read_bytes() == edited


def test_a_patched_file_without_its_record_is_not_trusted(copy):
    px.apply(copy)
    copy.record_path.unlink()
    st = px.status(copy)
    assert st.state == px.MODIFIED and "no patch record" in st.message
    with pytest.raises(px.UserError, match="refusing to revert"):
        px.revert(copy)


def _mutations(source: str) -> dict[str, str]:
    label_line = next(line for line in source.splitlines(True) if '"label": prompt_label.lower(),' in line)
    return {
        "assert": source.replace("assert prompt_label.lower() in [", "assert prompt_label.casefold() in ["),
        "label": source.replace(label_line, label_line * 2, 1),  # the key twice: ambiguous
        "query": source.replace('text_prompt = "OCR:"', 'text_prompt = "Text:"'),
    }


@pytest.mark.parametrize("point", ["assert", "label", "query"])
def test_an_unknown_shape_is_refused_with_nothing_written(copy, point):
    mutated = _mutations(_stock_bytes().decode("utf-8"))[point]
    copy.path.write_text(mutated, encoding="utf-8")
    before = _listing(copy)

    st = px.status(copy)
    assert st.state == px.UNSUPPORTED and f"patch point '{point}'" in st.message
    with pytest.raises(px.UserError, match=f"refusing to patch .*patch point '{point}'"):
        px.apply(copy)
    assert _listing(copy) == before


def test_an_older_patch_version_is_upgraded_from_the_backup(copy):
    original = copy.path.read_bytes()
    old = {**PATCH, "version": 0}
    px.apply(copy, old)
    assert px.status(copy).patch_version == 0
    assert "apply upgrades it" in px.status(copy).message
    assert px.apply(copy).patch_version == PATCH["version"]
    assert copy.path.read_bytes() == px.apply_to_source(original.decode("utf-8"), PATCH).encode("utf-8")
    px.revert(copy)
    assert copy.path.read_bytes() == original


def test_cli_status_apply_revert(copy, capsys):
    root = str(copy.package_dir.parent)
    assert main(["patch", "status", "--paddlex-path", root]) == 0
    assert "unpatched" in capsys.readouterr().out
    assert main(["patch", "apply", "--paddlex-path", root]) == 0
    assert "patched with v1" in capsys.readouterr().out
    assert main(["patch", "revert", "--paddlex-path", root]) == 0
    copy.path.write_text("x = 1\n", encoding="utf-8")
    assert main(["patch", "apply", "--paddlex-path", root]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to patch") and "Traceback" not in err
    assert main(["patch", "status", "--paddlex-path", str(copy.package_dir.parent.parent)]) == 1
    assert "neither holds the 'paddlex' package nor lies inside it" in capsys.readouterr().err


def test_paddlex_path_may_be_the_package_its_parent_or_a_file_inside_it(copy, capsys):
    # what `pip show -f paddlex` (Location: site-packages) and a traceback (.../paddlex/.../pipeline.py) point at
    for given in (copy.package_dir.parent, copy.package_dir, copy.path):
        assert px.find_target(given) == copy
    assert main(["patch", "apply", "--paddlex-path", str(copy.package_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"{copy.path} (paddlex {copy.version}): patched: patched with v1")
    assert main(["patch", "revert", "--paddlex-path", str(copy.path)]) == 0
    assert capsys.readouterr().out.startswith(f"{copy.path} (paddlex {copy.version}): unpatched")


# --- issue 4 §4: the real pipeline code on a patched copy sends the prompt verbatim ------------

_SPY_RUN = """
import json, sys
sys.path.insert(0, sys.argv[2])
import paddlex
assert paddlex.__file__.startswith(sys.argv[1]), paddlex.__file__
from test_paddlex_runtime import spy_pipeline
pipeline, spy, page = spy_pipeline(pipeline_class=sys.argv[4], model_name=sys.argv[5])
out = {}
for label in json.loads(sys.argv[3]):
    del spy.queries[:]
    try:
        results = list(pipeline.predict(page, use_layout_detection=False, prompt_label=label))
        out[label] = {"queries": list(spy.queries), "labels": [b.label for b in results[0]["parsing_res_list"]]}
    except AssertionError:
        out[label] = "AssertionError"
print(json.dumps(out))
"""


# the pipeline class `paddleocr doc_parser --pipeline_version` picks for each release, and its VL model
RELEASE_PIPELINES = {"v1": ("PaddleOCRVLPipeline", "PaddleOCR-VL-0.9B"),
                     "v1.5": ("PaddleOCRVL15Pipeline", "PaddleOCR-VL-1.5-0.9B"),
                     "v1.6": ("PaddleOCRVL16Pipeline", "PaddleOCR-VL-1.6-0.9B")}


def _run_real_pipeline(site: Path, labels: list[str], release: str = "v1") -> dict:
    env = {**os.environ, "PYTHONPATH": str(site), "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}
    proc = subprocess.run(
        [sys.executable, "-c", _SPY_RUN, str(site), str(ROOT / "tests"), json.dumps(labels), *RELEASE_PIPELINES[release]],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("release", ["v1", "v1.5", "v1.6"])
def test_real_pipeline_sends_a_custom_prompt_verbatim_after_apply(tmp_path, release):
    """The installed paddlex's own pipeline class of each release (doc_parser --pipeline_version),
    its VL predictor named as that release: custom prompts verbatim, Spotting:/Seal Recognition: kept."""
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__", "*.orig", "*" + px.RECORD_SUFFIX)
    shutil.copytree(INSTALLED.package_dir, site / "paddlex", ignore=ignore)
    target = px.find_target(site)
    target.path.write_bytes(_stock_bytes())
    prompts = [KIE, 'OCR:{"formula": ""}']
    builtins = ["ocr", "Table", "formula", "chart", "spotting", "seal"]

    stock = _run_real_pipeline(site, prompts + builtins, release)
    assert [stock[p] for p in prompts] == ["AssertionError"] * 2
    assert {b: stock[b]["queries"] for b in builtins} == {b: [BUILTIN_PROMPTS[b.lower()]] for b in builtins}

    px.apply(target)
    patched = _run_real_pipeline(site, prompts + builtins, release)
    for prompt in prompts:
        assert patched[prompt] == {"queries": [prompt], "labels": [prompt]}
    assert {b: patched[b] for b in builtins} == {b: stock[b] for b in builtins}
    assert patched["Table"] == {"queries": ["Table Recognition:"], "labels": ["table"]}
    assert (patched["spotting"]["queries"], patched["seal"]["queries"]) == (["Spotting:"], ["Seal Recognition:"])


# --- the CI job, offline: a wheel built from the installed files ------------------------------


def _ci_module():
    spec = importlib.util.spec_from_file_location("check_paddlex_patch", ROOT / ".ci" / "check_paddlex_patch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(wheel_dir: Path, version: str, pipeline_source: bytes) -> None:
    wheel_dir.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel_dir / f"paddlex-{version}-py3-none-any.whl", "w") as zf:
        for p in INSTALLED.path.parent.glob("*.py"):
            data = pipeline_source if p.name == "pipeline.py" else p.read_bytes()
            zf.writestr(f"{Path(PATCH['target']).parent}/{p.name}", data)
        for p in (INSTALLED.package_dir / px.PIPELINE_CONFIGS).glob("PaddleOCR-VL*.yaml"):
            zf.writestr(f"paddlex/{px.PIPELINE_CONFIGS.as_posix()}/{p.name}", p.read_bytes())
        zf.writestr(f"paddlex-{version}.dist-info/METADATA", f"Name: paddlex\nVersion: {version}\n")


@pytest.mark.slow
def test_ci_job_passes_on_the_installed_release(tmp_path):
    ci = _ci_module()
    doc = tmp_path / "patch.md"
    doc.write_text(f"intro\n{ci.BEGIN}\nold table\n{ci.END}\noutro\n", encoding="utf-8")
    _wheel(tmp_path / "wheels", INSTALLED.version, _stock_bytes())
    args = ["--versions", INSTALLED.version, "--wheel-dir", str(tmp_path / "wheels"), "--docs", str(doc)]
    assert ci.main(args) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert f"| {INSTALLED.version} | `{hashlib.sha256(_stock_bytes()).hexdigest()[:12]}` | rejected (assert) | yes | yes" in text
    assert "| v1, v1.5, v1.6 | PASS |" in text  # each release's pipeline checked with its VL model name


@pytest.mark.parametrize(
    "broken, problem",
    [
        ({"drop": "query"}, "custom prompt not verbatim"),  # the prompt would still become "OCR:"
        ({"drop": "label"}, "custom prompt not verbatim"),  # lowercased
        ({"query": 'if True:\n    text_prompt = block_label\nelif block_label == "table":'}, "built-in labels changed"),
    ],
)
def test_ci_harness_catches_a_wrong_patch(broken, problem):
    """The source-level check runs the pipeline's own predict: a wrong patch must fail it."""
    ci = _ci_module()
    points = [
        {**p, "replacement": broken.get(p["name"], p["replacement"])} for p in PATCH["points"] if p["name"] != broken.get("drop")
    ]
    source = _stock_bytes()
    wrong = px.apply_to_source(source.decode("utf-8"), {**PATCH, "points": points}).encode("utf-8")
    row = {"problems": []}
    ci._check_behaviour(row, source, wrong, "pipeline.py")
    assert any(problem in p for p in row["problems"]), row["problems"]
    good = {"problems": []}
    ci._check_behaviour(good, source, px.apply_to_source(source.decode("utf-8"), PATCH).encode("utf-8"), "pipeline.py")
    assert good["problems"] == [] and good["stock_custom"] == "AssertionError"


def test_ci_release_check_catches_a_wrong_model_name_and_a_release_branch():
    """The per-release check: the wheel's pipeline config must name the release's VL model, and a
    pipeline that treated one release's model differently (here: no spotting for 1.6) must fail."""
    ci = _ci_module()
    patched = px.apply_to_source(_stock_bytes().decode("utf-8"), PATCH)
    shipped = {"v1": "PaddleOCR-VL-0.9B", "v1.5": "PaddleOCR-VL-1.5-0.9B", "v1.6": "PaddleOCR-VL-1.6-0.9B"}
    good = {"problems": []}
    ci._check_releases(good, patched.encode("utf-8"), "pipeline.py", shipped)
    assert good == {"problems": [], "releases": ["v1", "v1.5", "v1.6"]}

    row = {"problems": []}
    ci._check_releases(row, patched.encode("utf-8"), "pipeline.py", {**shipped, "v1.6": "PaddleOCR-VL-1.5-0.9B"})
    assert row["problems"] == ["PaddleOCR-VL-1.6.yaml names VL model PaddleOCR-VL-1.5-0.9B, not PaddleOCR-VL-1.6-0.9B (releases.py)"]

    anchor = 'text_prompt = "Spotting:"'
    assert patched.count(anchor) == 1
    branch = patched.replace(anchor, 'text_prompt = "OCR:" if self.vl_rec_model.model_name.endswith("1.6-0.9B") else "Spotting:"')
    row = {"problems": []}
    ci._check_releases(row, branch.encode("utf-8"), "pipeline.py", shipped)
    assert row["problems"] == ["v1.6 (PaddleOCR-VL-1.6-0.9B): {'spotting': ['OCR:']}"]


def test_patch_status_says_which_releases_paddlex_runs(capsys):
    assert px.release_pipelines(INSTALLED.package_dir) == {
        "v1": "PaddleOCR-VL-0.9B", "v1.5": "PaddleOCR-VL-1.5-0.9B", "v1.6": "PaddleOCR-VL-1.6-0.9B"}
    assert main(["patch", "status"]) == 0
    assert (f"PaddleOCR-VL releases with a doc_parser pipeline in paddlex {INSTALLED.version}: v1 (PaddleOCR-VL-0.9B), "
            "v1.5 (PaddleOCR-VL-1.5-0.9B), v1.6 (PaddleOCR-VL-1.6-0.9B)") in capsys.readouterr().out


def test_a_reinstalled_paddlex_is_unpatched_and_can_be_patched_again(copy):
    """pip reinstall puts the stock file back and leaves our backup and record behind."""
    original = copy.path.read_bytes()
    px.apply(copy)
    copy.path.write_bytes(original)  # what `pip install --force-reinstall paddlex` does
    assert px.status(copy).state == px.UNPATCHED
    assert px.revert(copy).message.startswith("not patched")
    assert px.apply(copy).state == px.PATCHED
    px.revert(copy)
    assert copy.path.read_bytes() == original
