"""The CPU patches' machinery (backends/cpu/__init__.py) on small real modules written here: hash
checks of exactly what a patch relies on, clean refusals (exit 3), and the CPU-only rule.
The real patches against the installed trainers: tests/test_training_cpu.py."""

from __future__ import annotations

import importlib
import sys

import pytest

from paddle_ocrvl_sft.backends import cpu

# sha256 of the sources below as written here (computed once, independently of the code under test)
TARGET_SHA = "e90074bde6f68906b18cd2dd68cec01eb01d6b35cfa5264896405a14cf650435"  # fakemod:target
PACKAGE_SHA = "c35cc2d7670f9931a0e1376a3b926f6488e683097258cd776b17daf1daab8760"  # fakepkg + fakepkg.tools:dispatch
INIT, IMPL = "from .impl import kernel\n", 'def kernel():\n    return "fast"\n'
TOOLS = "def dispatch(fn, cond):\n    return fn if cond() else None\n"


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """fakemod.py and the package fakepkg/ (__init__, impl, tools) importable, forgotten afterwards."""
    (tmp_path / "fakemod.py").write_text("def target():\n    return 1\n")
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    for name, text in (("__init__.py", INIT), ("impl.py", IMPL), ("tools.py", TOOLS)):
        (pkg / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "fakemod" or m.startswith("fakepkg")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def config(tmp_path, device: str):
    path = tmp_path / "config.yaml"
    path.write_text(f"device: {device}\nmax_steps: 1\n")
    return str(path)


def test_a_patch_refuses_source_it_was_not_written_for(modules):
    patch = cpu.Patch("demo", "fakemod:target", TARGET_SHA, "an error", apply=lambda *a: None)
    owner, attr, source = patch.resolve()
    cpu.check(patch, source)
    (modules / "fakemod.py").write_text("def target():\n    return 2\n")
    del sys.modules["fakemod"]
    with pytest.raises(cpu.PatchRefused, match="written for another version of fakemod:target.*Refusing to patch unknown code"):
        cpu.check(patch, patch.resolve()[2])


@pytest.mark.parametrize("changed, text", [("impl.py", 'def kernel():\n    return "slow"\n'),
                                           ("tools.py", "def dispatch(fn, cond):\n    return fn\n")])
def test_a_package_stand_in_is_checked_against_every_file_it_stands_in_for(modules, changed, text):
    """Like the triton stub: it replaces the whole package and relies on a dispatcher elsewhere."""
    patch = cpu.Patch("stub", "fakepkg", PACKAGE_SHA, "an error", apply=lambda *a: None, covers=("fakepkg.tools:dispatch",))
    cpu.check(patch, patch.resolve()[2])
    (modules / "fakepkg" / changed).write_text(text)
    for name in [m for m in sys.modules if m.startswith("fakepkg")]:
        del sys.modules[name]
    with pytest.raises(cpu.PatchRefused, match="written for another version of fakepkg"):
        cpu.check(patch, patch.resolve()[2])


@pytest.mark.parametrize("target", ["fakemod:gone", "no_such_trainer_module:f", "no_such_trainer_package"])
def test_a_patched_module_or_attribute_that_no_longer_exists_is_a_clean_refusal(modules, tmp_path, capsys, target):
    applied = []
    patch = cpu.Patch("gone", target, TARGET_SHA, "an error", apply=lambda *a: applied.append(a))
    assert cpu.main(lambda: [patch], "fakemod:target", ["train", config(tmp_path, "cpu")]) == cpu.REFUSED_EXIT
    err = capsys.readouterr().err
    assert "refused: CPU patch 'gone'" in err and ("no longer exists" in err or "is not installed" in err)
    assert applied == []


@pytest.mark.parametrize("argv_tail, device", [([], "gpu"), (["device=gpu"], "cpu")])
def test_the_patches_refuse_a_run_that_is_not_on_the_cpu(modules, tmp_path, capsys, argv_tail, device):
    applied = []
    patch = cpu.Patch("demo", "fakemod:target", TARGET_SHA, "an error", apply=lambda *a: applied.append(a))
    assert cpu.main(lambda: [patch], "fakemod:target", ["train", config(tmp_path, device), *argv_tail]) == cpu.REFUSED_EXIT
    assert "the CPU patches are for device cpu, and this run is for device 'gpu'" in capsys.readouterr().err
    assert applied == []
    assert cpu.main(lambda: [patch], "fakemod:target", ["train", config(tmp_path, "cpu")]) == 0  # on the CPU: applied, run
    assert len(applied) == 1


def test_text_edits_must_match_exactly_once():
    import types

    module = types.ModuleType("fake_mod")
    exec("def f(x):\n    return x + 1\n", module.__dict__)
    sys.modules["fake_mod"] = module
    try:
        cpu.replace_in_source(module, "f", "def f(x):\n    return x + 1\n", [("x + 1", "x + 2")])
        assert module.f(1) == 3
        with pytest.raises(cpu.PatchRefused, match="not there exactly once"):
            cpu.replace_in_source(module, "f", "def f(x):\n    return x + 1\n", [("x * 9", "x")])
    finally:
        del sys.modules["fake_mod"]
