from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS, prompt_kind, query_for_fields


def test_prompt_kinds():
    assert {prompt_kind(p) for p in BUILTIN_PROMPTS.values()} == set(BUILTIN_PROMPTS)
    assert prompt_kind('OCR:{"NAME": "", "ITEMS": []}') == "kie"
    assert prompt_kind("OCR:{}") == "kie"
    assert prompt_kind("OCR:{broken") == "other"
    assert prompt_kind("OCR: ") == "other"
    assert prompt_kind("Describe the image") == "other"


def test_query_for_fields():
    assert query_for_fields(["a", "发票号码"]) == {"a": "", "发票号码": ""}
