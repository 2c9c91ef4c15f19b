"""ui.forms: a command's form comes from its own argparse definition, and goes back to its command line."""

from __future__ import annotations

import argparse
import os

import pytest

from paddle_ocrvl_sft.cli import build_parser, main
from paddle_ocrvl_sft.ui import forms
from paddle_ocrvl_sft.ui.paths import Refused, Roots


def cli_subparser(name: str) -> argparse.ArgumentParser:
    actions = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return actions.choices[name]


@pytest.mark.parametrize("name", ["plan", "eval", "train"])
def test_the_form_has_every_option_of_the_command(name):
    shown = [(f["dest"], f["flag"]) for f in forms.fields(forms.command_parser(name))]
    real = [(a.dest, max(a.option_strings, key=len) if a.option_strings else None)
            for a in cli_subparser(name)._actions if not isinstance(a, argparse._HelpAction)]
    assert shown == real


def test_an_option_added_to_the_command_shows_up_without_a_ui_change(monkeypatch):
    """What another stage adds to `plan` (a --release, an --augment) is in the form, typed, and reaches the parser."""
    from paddle_ocrvl_sft.commands import plan as plan_command

    original = plan_command.register

    def register(subparsers):
        original(subparsers)
        subparsers.choices["plan"].add_argument("--shiny-new", choices=("v1", "v1.5"), help="an option added later")

    monkeypatch.setattr(plan_command, "register", register)
    parser = forms.command_parser("plan")
    field = next(f for f in forms.fields(parser) if f["dest"] == "shiny_new")
    assert field == {**field, "flag": "--shiny-new", "kind": "choice", "choices": ["v1", "v1.5"], "help": "an option added later"}
    argv = forms.to_argv(parser, {"data": ["a.jsonl"], "model": "M", "epochs": "1", "out": "p", "shiny_new": "v1.5"})
    assert forms.parse(parser, argv).shiny_new == "v1.5"


def test_values_become_the_command_line_and_its_parser_judges_them():
    parser = forms.command_parser("plan")
    values = {"data": ["a.jsonl", "b.jsonl"], "prob": ["0.7", "0.3"], "model": "M", "epochs": "2", "lora": True,
              "backend": "paddleformers", "force": False, "out": "p", "overrides": ["save_steps=10"]}
    argv = forms.to_argv(parser, values)
    assert argv == ["--backend", "paddleformers", "--lora", "--data", "a.jsonl", "--data", "b.jsonl", "--prob", "0.7",
                    "--prob", "0.3", "--model", "M", "--epochs", "2", "--out", "p", "save_steps=10"]
    args = forms.parse(parser, argv)
    assert (args.data, args.prob, args.lora, args.epochs, args.overrides) == (["a.jsonl", "b.jsonl"], [0.7, 0.3], True, 2.0,
                                                                             ["save_steps=10"])
    with pytest.raises(forms.FormError, match=r"^the following arguments are required: --model$"):
        forms.parse(parser, forms.to_argv(parser, {"data": ["a.jsonl"], "epochs": "2", "out": "p"}))
    with pytest.raises(forms.FormError, match=r"argument --epochs: invalid float value: 'two'"):
        forms.parse(parser, forms.to_argv(parser, {"data": ["a"], "model": "M", "epochs": "two", "out": "p"}))
    with pytest.raises(forms.FormError, match="unknown field"):
        forms.to_argv(parser, {"nope": "1"})


def test_a_usage_error_reads_as_the_cli_prints_it(capsys):
    parser = forms.command_parser("plan")
    with pytest.raises(forms.FormError) as exc:
        forms.parse(parser, ["--data", "a.jsonl", "--epochs", "1", "-o", "p"])
    with pytest.raises(SystemExit):
        main(["plan", "--data", "a.jsonl", "--epochs", "1", "-o", "p"])
    assert capsys.readouterr().err.strip().endswith(f"error: {exc.value}")


def test_required_marks_only_what_the_command_requires():
    fields = {f["dest"]: f for f in forms.fields(forms.command_parser("plan"))}
    assert {d for d, f in fields.items() if f["required"]} == {"data", "model", "epochs", "out"}
    assert fields["overrides"]["positional"] and fields["overrides"]["repeat"]  # KEY=VALUE..., optional
    assert (fields["data"]["path"], fields["model"]["path"], fields["out"]["path"], fields["output_dir"]["path"]) == \
           ("read", "read", "write", "write")


def test_server_paths_in_the_values_are_checked(tmp_path):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "a.jsonl").write_text("")
    (work / "escape").symlink_to(tmp_path)
    roots = Roots.create(work)
    parser = forms.command_parser("plan")
    base = {"data": ["data/a.jsonl"], "model": "m", "epochs": "1", "out": "plans/p"}
    argv = forms.to_argv(parser, {**base, "overrides": ["save_steps=10", "lr_scheduler_type=constant"]}, roots)
    assert argv[argv.index("--data") + 1] == str(work / "data" / "a.jsonl")  # made absolute: jobs run anywhere
    assert argv[argv.index("--out") + 1] == str(work / "plans" / "p")
    for bad in ({"data": ["../x.jsonl"]}, {"data": ["/etc/passwd"]}, {"model": "escape/m"}, {"out": "/tmp/elsewhere"},
                {"preset": "../../x.yaml"}, {"output_dir": "escape/out"}, {"overrides": ["logging_dir=/tmp/x"]},
                {"cuda_visible_devices": "../../etc"}):
        with pytest.raises(Refused) as exc:
            forms.to_argv(parser, {**base, **bad}, roots)
        assert exc.value.status == 403, bad
    argv = forms.to_argv(parser, {**base, "preset": "kie_16k", "cuda_visible_devices": "0,1"}, roots)
    assert argv[argv.index("--preset"):argv.index("--preset") + 2] == ["--preset", "kie_16k"]  # names pass as they are
    assert argv[argv.index("--cuda-visible-devices") + 1] == "0,1"


def test_roots_refuse_what_lies_outside(tmp_path):
    work, other = tmp_path / "work", tmp_path / "models"
    work.mkdir()
    other.mkdir()
    (work / "link").symlink_to(other)
    roots = Roots.create(work, allow=[other])
    assert roots.resolve("link") == other  # readable: an --allow dir
    with pytest.raises(Refused) as exc:
        roots.resolve("link/x", write=True)  # never written
    assert exc.value.status == 403 and "outside the UI's workdir" in exc.value.message
    for text, status in (("../x", 403), ("/", 403), ("", 400), ("a\x00b", 400), (os.sep.join([".."] * 30), 403)):
        with pytest.raises(Refused) as exc:
            Roots.create(work).resolve(text)
        assert exc.value.status == status, text
    assert roots.shown(work / "a" / "b.jsonl") == "a/b.jsonl" and roots.shown(other) == str(other)


@pytest.mark.parametrize("names,writes", [
    (("plan",), {"output_dir", "out"}), (("train",), {"plan_dir"}), (("eval",), {"out"}),
    (("data", "validate"), {"write_clean"}), (("data", "split"), {"out_prefix"}), (("data", "convert"), {"output", "crop_dir"}),
    (("data", "kie"), {"out"}),
])
def test_what_a_command_writes_is_checked_as_a_write(names, writes):
    """Outputs must lie in the workdir: an --allow dir is read, never written."""
    kinds = {f["dest"]: f["path"] for f in forms.fields(forms.command_parser(*names))}
    assert {dest for dest, kind in kinds.items() if kind == "write"} == writes


def test_an_allowed_dir_is_never_written(tmp_path):
    work, shared = tmp_path / "work", tmp_path / "shared"
    work.mkdir()
    shared.mkdir()
    (shared / "a.jsonl").write_text("")
    roots = Roots.create(work, allow=[shared])
    parser = forms.command_parser("data", "validate")
    argv = forms.to_argv(parser, {"files": [str(shared / "a.jsonl")], "write_clean": "clean.jsonl"}, roots)
    assert argv == ["--write-clean", str(work / "clean.jsonl"), str(shared / "a.jsonl")]
    with pytest.raises(Refused) as exc:
        forms.to_argv(parser, {"files": [str(shared / "a.jsonl")], "write_clean": str(shared / "clean.jsonl")}, roots)
    assert exc.value.status == 403


@pytest.mark.parametrize("names,values", [
    (("plan",), {"data": ["data/a.jsonl"], "model": "m", "epochs": "1", "out": "plans/p",
                 "overrides": ["--output-dir", "/elsewhere/x", "--force"]}),
    (("train",), {"plan_dir": "plans/p", "overrides": ["--docker", "--image", "alpine"]}),
    (("data", "validate"), {"files": ["--write-clean=/elsewhere/x.jsonl"]}),
])
def test_a_positional_value_is_never_read_as_an_option(tmp_path, names, values):
    """Positionals go after the options: a value starting with '-' would be parsed as an option, unchecked."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("")
    parser = forms.command_parser(*names)
    with pytest.raises(forms.FormError, match="starts with '-'") as exc:
        forms.to_argv(parser, values, Roots.create(tmp_path))
    assert str(exc.value).split(":")[0] in ("KEY=VALUE", "FILE")  # names the field


def test_general_pages_and_the_crop_dir_are_paths(tmp_path):
    work, shared = tmp_path / "work", tmp_path / "shared"
    work.mkdir()
    shared.mkdir()
    roots = Roots.create(work, allow=[shared])
    for names in (("plan",), ("eval",)):
        field = next(f for f in forms.fields(forms.command_parser(*names)) if f["dest"] == "general")
        assert field["path"] == "read", names
    plan = {"data": ["a.jsonl"], "model": "m", "epochs": "1", "out": "plans/p"}
    argv = forms.to_argv(forms.command_parser("plan"), {**plan, "general": "pages"}, roots)
    assert argv[argv.index("--general") + 1] == str(work / "pages")  # checked and made absolute like any path
    convert = forms.command_parser("data", "convert")
    with pytest.raises(Refused) as exc:  # an --allow dir is read, never written: not even crops
        forms.to_argv(convert, {"input": "a.txt", "output": "o.jsonl", "crop": True, "crop_dir": str(shared / "c")}, roots)
    assert exc.value.status == 403
