"""The witness: numbers that a page's text layer and its OCR disagree on."""

from __future__ import annotations

from consumer.witness import extract_numbers, number_disagreements


def test_same_numbers_spelled_differently_agree() -> None:
    layer = "Total: $1,234.56 due 05/03/2024, invoice 884213, 12 items"
    ocr = "Total $1234.56 due 05.03.2024 invoice 884213 12 items"
    assert number_disagreements(layer, ocr) == []


def test_a_misread_digit_is_one_row_with_both_spellings() -> None:
    rows = number_disagreements("Amount due: $1,234.56", "Amount due: $1,284.56")
    assert rows == [
        {"kind": "currency", "text_layer": "$1,234.56", "ocr": "$1,284.56", "text_layer_offset": 12, "ocr_offset": 12}
    ]


def test_a_lost_decimal_point_disagrees() -> None:
    rows = number_disagreements("Price 12.50 EUR", "Price 1250 EUR")
    assert [(r["kind"], r["text_layer"], r["ocr"]) for r in rows] == [("currency", "12.50 EUR", "1250 EUR")]


def test_dates_compare_by_value() -> None:
    assert number_disagreements("signed 2024-03-05", "signed 2024-3-5") == []
    rows = number_disagreements("signed 2024-03-05", "signed 2024-08-05")
    assert [(r["kind"], r["text_layer"], r["ocr"]) for r in rows] == [("date", "2024-03-05", "2024-08-05")]


def test_numbers_one_side_lacks_stand_alone() -> None:
    rows = number_disagreements("Qty 12 and 4500", "Qty 12")
    assert rows == [{"kind": "number", "text_layer": "4500", "ocr": None, "text_layer_offset": 11, "ocr_offset": None}]
    rows = number_disagreements("Qty 12", "Qty 12 and 77")
    assert [(r["text_layer"], r["ocr"]) for r in rows] == [(None, "77")]


def test_order_does_not_matter_but_counts_do() -> None:
    # OCR may read table columns in another order: the same numbers agree.
    assert number_disagreements("10 20 30", "30 10 20") == []
    # A number printed twice must be read twice.
    rows = number_disagreements("10 10 20", "10 20")
    assert [(r["text_layer"], r["ocr"]) for r in rows] == [("10", None)]


def test_unrelated_numbers_are_not_paired() -> None:
    rows = number_disagreements("code 123456", "code 987")
    assert [(r["text_layer"], r["ocr"]) for r in rows] == [("123456", None), (None, "987")]


def test_single_digits_are_ignored_but_currency_is_not() -> None:
    assert number_disagreements("see note 1", "see note 7") == []
    rows = number_disagreements("fee $5", "fee $6")
    assert [(r["kind"], r["text_layer"], r["ocr"]) for r in rows] == [("currency", "$5", "$6")]


def test_extract_numbers_kinds_and_values() -> None:
    tokens = extract_numbers("On 31.12.2023 we paid € 1.234,50 for 250 units (EUR 99)")
    assert [(t.kind, t.text, t.value) for t in tokens] == [
        ("date", "31.12.2023", "31-12-2023"),
        ("currency", "€ 1.234,50", "€ 1234.50"),
        ("number", "250", "250"),
        ("currency", "EUR 99", "EUR 99"),
    ]


def test_text_without_numbers() -> None:
    assert number_disagreements("", "") == []
    assert number_disagreements("no numbers here", "none here either") == []
