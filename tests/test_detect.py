"""`data convert --from auto`: every example in tests/data/convert is named, and refused ones once."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.detect import detect, image_text_columns, media_of
from paddle_ocrvl_sft.errors import UsageError, UserError

EXAMPLES = Path(__file__).resolve().parent / "data" / "convert"

# file -> (the --from that reads it, or None when auto refuses it; words of the name it is given;
#          for a refused one, words of what to do instead)
EXPECTED = {
    "erniekit.jsonl": ("erniekit", "ERNIEKit OCR-VL samples", None),
    "llava.json": ("llava", "LLaVA / MiniCPM-V / GOT-OCR2.0 conversations", None),
    "got_readme.jsonl": ("got", "GOT-OCR2.0 README", None),
    "messages.jsonl": ("messages", "OpenAI-style messages", None),
    "sharegpt.jsonl": ("messages", "ShareGPT conversations", None),
    "llamafactory_v1.jsonl": ("messages", "LLaMA-Factory v1 messages", None),
    "paddleocr_rec.txt": ("paddleocr-rec", "PaddleOCR recognition labels", None),
    "paddleocr_det.txt": (None, "PaddleOCR detection labels", "with --from paddleocr-det --crop (boxes transcribed '###' are skipped)"),
    "pubtabnet.jsonl": ("html-table", "HTML tables (filename, html; PubTabNet)", None),
    "formula.csv": ("formula", "LaTeX formulas", None),
    "image_prompt_answer.csv": ("csv", "image, prompt, answer", None),
    "table_csv_manifest.csv": (None, "an image,table_csv manifest", "pass --from csv-table or --from chart"),
    "hf_metadata.csv": ("image-text", "Hugging Face metadata: file_name → image, text → ocr target", None),
    "hf_metadata.jsonl": ("image-text", "Hugging Face metadata: file_name → image, text → ocr target", None),
    "im2latex.csv": ("image-text", "im2latex-style: image → image, formula → formula target", None),
    "video.jsonl": (None, "video samples", "extract the frames to read as image files"),
    "audio.jsonl": (None, "audio samples", "leave them out"),
    "data_url.jsonl": (None, "images inlined as data: URLs", "write each image to a file"),
}


def test_every_example_has_an_expectation():
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_convert_from_auto_names_the_format_of_each_example(tmp_path, capsys, name):
    fmt, words, todo = EXPECTED[name]
    out = tmp_path / "out.jsonl"
    status = main(["data", "convert", str(EXAMPLES / name), "-o", str(out)])  # --from auto is the default
    stdout, stderr = capsys.readouterr()
    if fmt is None:  # refused once, with its name and what to do
        assert status == 1 and not out.exists()
        assert stderr.splitlines() == [stderr.strip()]
        assert stderr.startswith(f"error: {EXAMPLES / name}: looks like {words}") and todo in stderr
    else:  # read as that format (convert does not open images: every record converts)
        assert status == 0, stderr
        assert f"read {EXAMPLES / name} as --from {fmt}: it looks like " in stdout and words in stdout
        assert read_lines(out)


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_detection_reads_only_the_first_records(tmp_path):
    # a 20th-record media sample does not refuse a file of images (the converter rejects that record)
    rows = [{"messages": [{"role": "user", "content": "<image>OCR:"}, {"role": "assistant", "content": "x"}],
             "images": [f"{i}.png"]} for i in range(30)]
    rows[25]["videos"] = ["v.mp4"]
    assert detect(write_jsonl(tmp_path / "m.jsonl", rows)).fmt == "messages"


def test_undetectable_files_ask_for_from(tmp_path):
    cases = {
        "empty.jsonl": "",
        "keys.jsonl": '{"foo": 1, "bar": 2}\n',
        "plain.txt": "just some text\n",
        "odd.csv": "a,b,c\n1,2,3\n",
        "broken.jsonl": "{not json\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as exc:
            detect(tmp_path / name)
        assert str(exc.value).startswith(f"{tmp_path / name}: ") and ("--from" in str(exc.value) or "empty" in str(exc.value)), name


def test_media_is_found_in_every_layout():
    assert media_of({"video": "a.mp4", "conversations": []}) == "video"
    assert media_of({"messages": [{"role": "user", "content": [{"type": "video_url", "value": "a.mp4"}]}]}) == "video"
    assert media_of({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}) == "audio"
    assert media_of({"images": ["data:image/jpeg;base64,/9j/4AAQ"]}) == "data-url"
    assert media_of({"image_info": [{"image_url": "data:image/png;base64,iVBOR", "matched_text_index": 0}]}) == "data-url"
    assert media_of({"messages": [{"role": "user", "content": [{"type": "image_url", "value": "data:image/png;base64,AA"}]}]}) == "data-url"
    # text that merely mentions a data: URL, and empty media lists, are no media
    assert media_of({"messages": [{"role": "assistant", "content": "data:image/png;base64,AA"}], "videos": []}) is None


def test_image_text_columns_from_the_header_or_the_options():
    assert image_text_columns(["file_name", "text"]) == ("file_name", "text", "ocr")
    assert image_text_columns(["formula", "image"]) == ("image", "formula", "formula")
    assert image_text_columns(["file_name", "text", "split"]) == ("file_name", "text", "ocr")  # one named text column
    assert image_text_columns(["file_name", "caption"], task="ocr") == ("file_name", "caption", "ocr")
    assert image_text_columns(["a", "b"], columns=("b", "a"), task="chart") == ("b", "a", "chart")
    for header, kwargs, words in [
        (["file_name", "caption"], {}, "pass --task"),
        (["file_name", "text", "label"], {}, "--columns file_name,TEXT"),
        (["a", "b"], {}, "no image column"),
        (["a", "b"], {"columns": ("a", "c")}, "no column 'c'"),
    ]:
        with pytest.raises(UsageError, match=words):
            image_text_columns(header, **kwargs)


# --- robustness: whatever the file holds, auto names it or says it cannot, never a traceback ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = ["image", "images", "file_name", "text", "query", "response", "history", "messages", "conversations", "role",
        "content", "type", "value", "from", "html", "latex", "table_csv", "videos", "image_info", "text_info", "points"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["<image>OCR:", "a.png", "image_url",
                                                                                       "user", "data:image/png;base64,AA"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(json_values, min_size=1, max_size=4))
def test_arbitrary_json_records_are_named_or_refused_cleanly(tmp_path, capsys, rows):
    path = write_jsonl(tmp_path / "fuzz.jsonl", [json.dumps(r) for r in rows])
    assert main(["data", "convert", str(path), "-o", str(tmp_path / "o.jsonl"), "--force"]) in (0, 1, 2)
    assert "Traceback" not in "".join(capsys.readouterr())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt"]))
def test_arbitrary_bytes_are_named_or_refused_cleanly(tmp_path, capsys, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        detect(path)
    except UserError as exc:
        assert str(exc).startswith(f"{path}")
    assert main(["data", "convert", str(path), "-o", str(tmp_path / "o.jsonl"), "--force"]) in (0, 1, 2)
