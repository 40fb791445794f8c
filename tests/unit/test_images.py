"""Images become PDFs at the door: one page a frame, at the job's DPI, with clear codes for bad ones."""

from __future__ import annotations

import io

import pypdfium2 as pdfium
import pytest
from PIL import Image

from producer.images import ImageLimits, as_pdf, image_kind, image_to_pdf, pdf_name
from schemas.errors import ErrorCode, PermanentError


def encoded(fmt: str, size: tuple[int, int] = (300, 150), frames: int = 1, mode: str = "RGB") -> bytes:
    images = [Image.new(mode, size, "white" if mode != "RGBA" else (255, 255, 255, 128)) for _ in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, fmt, save_all=frames > 1, append_images=images[1:])
    return buffer.getvalue()


def pages_of(pdf: bytes) -> list[tuple[float, float]]:
    document = pdfium.PdfDocument(pdf)
    try:
        return [document[i].get_size() for i in range(len(document))]
    finally:
        document.close()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_an_image_becomes_one_page_at_the_jobs_dpi(fmt: str) -> None:
    pdf = as_pdf(encoded(fmt), "scan", dpi=150)

    # 300 x 150 pixels at 150 DPI: 2 x 1 inches, so rendering at 150 DPI gives the image's own pixels back.
    assert pages_of(pdf) == [pytest.approx((144.0, 72.0), abs=0.01)]


def test_a_multi_page_tiff_gives_a_page_a_frame() -> None:
    assert len(pages_of(image_to_pdf(encoded("TIFF", frames=3)))) == 3


def test_a_png_with_transparency_is_taken() -> None:
    assert len(pages_of(image_to_pdf(encoded("PNG", mode="RGBA")))) == 1


def test_a_jpeg_is_embedded_as_it_is() -> None:
    jpeg = encoded("JPEG", size=(200, 200))
    assert jpeg[-200:] in image_to_pdf(jpeg)  # the JPEG stream itself, not a re-encoding


def test_a_pdf_passes_through_untouched() -> None:
    pdf = b"%PDF-1.7\n..."
    assert as_pdf(pdf) is pdf


@pytest.mark.parametrize(
    ("data", "limits", "code"),
    [
        (encoded("PNG")[:60], ImageLimits(), ErrorCode.BAD_IMAGE),
        (encoded("JPEG")[:40], ImageLimits(), ErrorCode.BAD_IMAGE),
        (encoded("PNG", size=(2000, 1000)), ImageLimits(max_megapixels=1), ErrorCode.IMAGE_TOO_LARGE),
        (encoded("TIFF", frames=3), ImageLimits(max_pages=2), ErrorCode.TOO_MANY_PAGES),
        (b"GIF89a....", ImageLimits(), ErrorCode.NOT_A_PDF),
        (b"", ImageLimits(), ErrorCode.EMPTY_FILE),
    ],
)
def test_bad_images_get_their_code(data: bytes, limits: ImageLimits, code: ErrorCode) -> None:
    with pytest.raises(PermanentError) as caught:
        as_pdf(data, "x", limits=limits)
    assert caught.value.code == code


def test_kinds_and_names() -> None:
    assert [image_kind(encoded(f)[:16]) for f in ("PNG", "JPEG", "TIFF")] == ["png", "jpeg", "tiff"]
    assert image_kind(b"%PDF-1.7") is None
    assert pdf_name("scan.PNG") == "scan.pdf" and pdf_name("notes") == "notes.pdf"
