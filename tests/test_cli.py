"""The CLI shell: registering every command stays cheap; heavy modules load in the handlers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from paddle_ocrvl_sft.cli import main

SHELL = {"paddle_ocrvl_sft", "paddle_ocrvl_sft.cli", "paddle_ocrvl_sft.errors", "paddle_ocrvl_sft.commands"}


def test_building_the_parser_imports_only_the_command_shells_and_the_standard_library():
    code = (
        "import json, sys\nbefore = set(sys.modules)\n"
        "from paddle_ocrvl_sft.cli import build_parser\nbuild_parser()\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    added = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    ours = {m for m in added if m.split(".")[0] == "paddle_ocrvl_sft"}
    others = {m for m in added if m.split(".")[0] not in sys.stdlib_module_names and m not in ours}
    assert others == set()  # no numpy, PIL, yaml, paddle, ...
    assert {m for m in ours if m not in SHELL and not m.startswith("paddle_ocrvl_sft.commands.")} == set()
    assert "paddle_ocrvl_sft.commands.data_convert" in ours  # every command was registered
    assert not {"csv", "html.parser", "tempfile"} & set(added)  # what the converters and io pull in


def test_top_level_help_runs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "data" in capsys.readouterr().out


def test_convert_help_lists_every_format_when_printed(capsys):
    from paddle_ocrvl_sft.data.convert import CONVERTERS, WRITERS

    with pytest.raises(SystemExit) as exc:
        main(["data", "convert", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for name, cls in CONVERTERS.items():
        assert f"  {name:<14} {cls.summary}" in out
    assert f"output formats (--to): {', '.join(WRITERS)}" in out


def test_unknown_convert_formats_are_usage_errors(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    assert main(["data", "convert", "--from", "nope", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert main(["data", "convert", str(src), "--to", "nope", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--from nope: unknown format (choose from llava" in err and "--to nope: unknown format (choose from erniekit" in err
