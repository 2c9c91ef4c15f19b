import json

from paddle_ocrvl_sft.receipts import make_receipts
from paddle_ocrvl_sft.testing import receipt_image


def test_receipt_image_is_deterministic_and_sized_by_fields():
    a = receipt_image({"total": "12.50", "date": "2024-01-02"})
    b = receipt_image({"total": "12.50", "date": "2024-01-02"})
    assert a.size == (320, 24 + 18 * 3) and a.tobytes() == b.tobytes()
    assert receipt_image({"total": "9.99"}).tobytes() != a.tobytes()


def test_make_receipts_writes_images_with_consistent_fields(tmp_path):
    annotations = make_receipts(tmp_path / "a", count=5, seed=3)
    rows = [json.loads(line) for line in annotations.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert (tmp_path / "a" / row["image"]).is_file()
        items = row["data"]["ITEMS"]
        assert f"{sum(float(i['TOTAL PRICE']) for i in items):.2f}" == row["data"]["TOTAL"]
    again = make_receipts(tmp_path / "b", count=5, seed=3)
    assert again.read_text() == annotations.read_text()
    assert (tmp_path / "a" / rows[0]["image"]).read_bytes() == (tmp_path / "b" / rows[0]["image"]).read_bytes()
