"""How the worker combines a page's text layer and OCR: text source, hybrid merge, the witness."""

from __future__ import annotations

from consumer.engines import PageText
from consumer.pdf import PageContent, PageSource, TextLayer
from consumer.reading import combine
from schemas.messages import Block, Engine, TextSource

INVOICE = "Invoice 2024-117 issued 05/03/2024 for a total of EUR 1,234.56 payable in thirty days."


def layer(text: str, content: PageContent) -> TextLayer:
    return TextLayer(
        text=text,
        boxes=[(text, (0.1, 0.1, 0.9, 0.15), 1.0)],
        chars=len(text),
        content=content,
    )


def ocr(text: str, y: float = 0.1) -> PageText:
    return PageText(text=text, blocks=[Block(text=text, bbox=(0.1, y, 0.9, y + 0.05), confidence=0.9)], confidence=0.9)


def test_a_scan_without_a_layer_is_plain_ocr() -> None:
    reading = combine(None, ocr(INVOICE), Engine.RAPIDOCR, 12.0)
    assert (reading.source, reading.text, reading.disagreements) == (TextSource.OCR, INVOICE, [])


def test_an_invisible_layer_under_a_scan_witnesses_the_numbers() -> None:
    # Given a scan whose hidden text layer says 1,234.56 where OCR read 1,284.56
    hidden = layer(INVOICE, PageContent(text_objects=10, visible_text_objects=0, image_share=1.0))
    assert hidden.source == PageSource.OCR

    reading = combine(hidden, ocr(INVOICE.replace("1,234.56", "1,284.56")), Engine.RAPIDOCR, 12.0)

    # Then OCR's text is kept and the disagreement is listed, the agreeing date is not
    assert reading.source == TextSource.OCR
    assert [(d.kind, d.text_layer, d.ocr) for d in reading.disagreements] == [
        ("currency", "EUR 1,234.56", "EUR 1,284.56")
    ]


def test_a_hybrid_page_merges_layer_and_ocr_without_duplicates() -> None:
    # Given a born-digital paragraph above a pasted-in scan of another one
    page = layer(INVOICE, PageContent(text_objects=10, visible_text_objects=10, image_share=0.4, bare_image_share=0.4))
    assert page.source == PageSource.HYBRID
    scanned = "Signed and stamped by the accounts department."
    both = PageText(
        text=f"{INVOICE}\n{scanned}",
        blocks=[*ocr(INVOICE).blocks, *ocr(scanned, y=0.6).blocks],
        confidence=0.9,
    )

    reading = combine(page, both, Engine.RAPIDOCR, 12.0)

    assert reading.source == TextSource.HYBRID
    assert reading.text.count("Invoice 2024-117") == 1
    assert scanned in reading.text
