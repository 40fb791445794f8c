"""Small PDFs made on the spot: the demo's sample and the tests' inputs.

pdfium writes them, so nothing binary is checked in and a reader sees what a
test feeds the service. ``mixed_sample`` has a born-digital page and a page
that is an image only (a "scan"), so one job shows both paths of ``auto``:
the text layer, and OCR.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from consumer.pdf import PDFIUM_LOCK

TextRun = tuple[float, float, str]
"""x, y of the baseline start in points from the top-left corner, and the text."""

LETTER = (612.0, 792.0)

DEMO_TEXT = [
    "pagewire turns PDFs into text at scale.",
    "Producers put PDFs in S3 and publish job messages to RabbitMQ.",
    "Consumers render pages with pdfium and read them with OCR,",
    "or take the text layer where a page already has one.",
    "Every page goes out as an event; PostgreSQL keeps the status.",
]

SCAN_TEXT = [
    "This page is an image only: it has no text layer.",
    "pagewire rendered it with pdfium and read it by OCR,",
    "rapidocr on a CPU or nemotron-ocr on a GPU,",
    "then put the lines it found in reading order.",
]


def add_text(
    doc: pdfium.PdfDocument, page: pdfium.PdfPage, runs: list[TextRun], *, font_size: float = 12.0, render_mode: int = 0
) -> None:
    """Insert Helvetica text runs on ``page``; the caller holds :data:`PDFIUM_LOCK` and generates the content.

    ``render_mode`` is the PDF text render mode (3: invisible, as scanners write their OCR layer).
    """
    height = page.get_height()
    for x, y, text in runs:
        obj = pdfium_c.FPDFPageObj_NewTextObj(doc.raw, b"Helvetica", ctypes.c_float(font_size))
        encoded = (text + "\0").encode("utf-16-le")
        buffer = ctypes.create_string_buffer(encoded, len(encoded))
        pdfium_c.FPDFText_SetText(obj, ctypes.cast(buffer, ctypes.POINTER(pdfium_c.FPDF_WCHAR)))
        if render_mode:
            pdfium_c.FPDFTextObj_SetTextRenderMode(obj, render_mode)
        pdfium_c.FPDFPageObj_Transform(obj, 1, 0, 0, 1, x, height - y)
        pdfium_c.FPDFPage_InsertObject(page.raw, obj)


def text_pdf(
    pages: list[list[TextRun]], *, size: tuple[float, float] = LETTER, font_size: float = 12.0, rotation: int = 0
) -> bytes:
    """A born-digital PDF with Helvetica text runs on each page (``rotation``: each page's /Rotate)."""
    with PDFIUM_LOCK:
        doc = pdfium.PdfDocument.new()
        try:
            for runs in pages:
                page = doc.new_page(*size)
                add_text(doc, page, runs, font_size=font_size)
                pdfium_c.FPDFPage_GenerateContent(page.raw)
                if rotation:
                    pdfium_c.FPDFPage_SetRotation(page.raw, rotation // 90)
                page.close()
            out = io.BytesIO()
            doc.save(out)
        finally:
            doc.close()
    return out.getvalue()


def lines(text_lines: list[str], *, top: float = 90.0, step: float = 22.0, left: float = 72.0) -> list[TextRun]:
    """Text runs for lines set one under the other."""
    return [(left, top + i * step, line) for i, line in enumerate(text_lines)]


def _image_page(doc: pdfium.PdfDocument, bitmap: pdfium.PdfBitmap, size: tuple[float, float]) -> None:
    page = doc.new_page(*size)
    pdf_image = pdfium.PdfImage.new(doc)
    pdf_image.set_bitmap(bitmap)
    pdf_image.set_matrix(pdfium.PdfMatrix().scale(size[0], size[1]))
    page.insert_obj(pdf_image)
    page.gen_content()
    page.close()


def scanned_pdf(pages: list[list[TextRun]], *, dpi: int = 150, size: tuple[float, float] = LETTER) -> bytes:
    """Image-only pages: the text pages rendered at ``dpi`` and placed as pictures, with no text layer."""
    born = text_pdf(pages, size=size, font_size=14.0)
    with PDFIUM_LOCK:
        src = pdfium.PdfDocument(born)
        doc = pdfium.PdfDocument.new()
        try:
            for i in range(len(src)):
                page = src[i]
                bitmap = page.render(scale=dpi / 72, grayscale=True)
                _image_page(doc, bitmap, size)
                bitmap.close()
                page.close()
            out = io.BytesIO()
            doc.save(out)
        finally:
            doc.close()
            src.close()
    return out.getvalue()


def concat(*pdfs: bytes) -> bytes:
    """The pages of several PDFs in one."""
    with PDFIUM_LOCK:
        doc = pdfium.PdfDocument.new()
        sources = [pdfium.PdfDocument(data) for data in pdfs]
        try:
            for src in sources:
                doc.import_pages(src)
            out = io.BytesIO()
            doc.save(out)
        finally:
            for src in sources:
                src.close()
            doc.close()
    return out.getvalue()


LONG_BLOCK_PAGES = 50
"""Pages :func:`long_text_pdf` writes with pdfium once, then repeats: writing 1,000 pages one by one takes ~20 s."""


def long_text_pdf(pages: int) -> bytes:
    """A born-digital PDF of ``pages`` pages, 30 lines of 10 pt text each (the benches' long document)."""
    block = text_pdf(
        [
            lines([f"Page {p} line {i}: pagewire turns PDFs into text at scale, one event a page." for i in range(30)])
            for p in range(1, LONG_BLOCK_PAGES + 1)
        ],
        font_size=10,
    )
    whole, rest = divmod(pages, LONG_BLOCK_PAGES)
    parts = [block] * whole
    if rest:
        parts.append(
            text_pdf([lines([f"Page {p} line {i}: the rest." for i in range(30)]) for p in range(1, rest + 1)])
        )
    return parts[0] if len(parts) == 1 else concat(*parts)


def mixed_sample() -> bytes:
    """Page 1 born-digital, page 2 an image only, with text of its own so that the OCR path shows."""
    return concat(text_pdf([lines(DEMO_TEXT)], font_size=14.0), scanned_pdf([lines(SCAN_TEXT)]))


def zero_page_pdf() -> bytes:
    """A valid PDF with an empty page tree, as pdfium itself writes one."""
    with PDFIUM_LOCK:
        doc = pdfium.PdfDocument.new()
        out = io.BytesIO()
        doc.save(out)
        doc.close()
    return out.getvalue()


def write_pdf(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF file of the given objects (numbered from 1, the first the catalog) with a correct xref table.

    For the files pdfium will not write: encrypted ones, and broken or hostile ones that tests feed in.
    ``trailer`` is added to the trailer dictionary.
    """
    body = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(body))
        body += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    body += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    body += b"trailer\n<< /Size %d /Root 1 0 R %s >>\n" % (len(objects) + 1, trailer)
    body += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(body)


# --- an encrypted PDF, written by hand ---------------------------------------
# pdfium cannot write encrypted files, so this writes the smallest one the
# standard security handler allows (revision 2, 40-bit RC4, PDF 1.7 spec
# 7.6.3.3, algorithms 2, 3 and 4) with a non-empty user password. The page
# holds no strings or streams, so nothing else needs encrypting.

_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def encrypted_pdf(user_password: bytes = b"secret", owner_password: bytes = b"owner") -> bytes:
    """A one-page PDF that opens only with ``user_password``."""
    file_id = hashlib.md5(b"pagewire-test").digest()
    permissions = -4  # every permission bit set; the value does not matter here
    owner_key = hashlib.md5((owner_password + _PAD)[:32]).digest()[:5]
    o_entry = _rc4(owner_key, (user_password + _PAD)[:32])
    key = hashlib.md5((user_password + _PAD)[:32] + o_entry + permissions.to_bytes(4, "little", signed=True) + file_id)
    u_entry = _rc4(key.digest()[:5], _PAD)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>"
        % (o_entry.hex().encode(), u_entry.hex().encode(), permissions),
    ]
    trailer = b"/Encrypt 4 0 R /ID [<%s> <%s>]" % (file_id.hex().encode(), file_id.hex().encode())
    return write_pdf(objects, trailer)


def single_page(path: Path, page_no: int) -> bytes:
    """One page of ``path`` as a PDF of its own."""
    with PDFIUM_LOCK:
        src = pdfium.PdfDocument(path)
        doc = pdfium.PdfDocument.new()
        try:
            doc.import_pages(src, [page_no - 1])
            out = io.BytesIO()
            doc.save(out)
        finally:
            doc.close()
            src.close()
    return out.getvalue()
