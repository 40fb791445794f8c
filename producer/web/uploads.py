"""Uploads that may be images: a PDF passes as it is, a PNG, JPEG or TIFF becomes the pages of one.

The gateway's routes that take a file (``POST /jobs``, slimgest's and
DeepSeek-OCR's) read it here; everything after sees a PDF.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from typing import BinaryIO

from starlette.datastructures import UploadFile as StarletteUploadFile

from producer.images import IMAGE_CONTENT_TYPES, PDF_HEADER_WINDOW, ImageLimits, as_pdf, image_kind, is_pdf
from producer.web.errors import ApiError
from producer.web.gateway import PDF_CONTENT_TYPES, HttpSettings
from schemas.errors import ErrorCode, PermanentError

# HTTP status of each code an upload's conversion can give.
UPLOAD_STATUS: dict[str, int] = {
    ErrorCode.NOT_A_PDF: 415,
    ErrorCode.EMPTY_FILE: 422,
    ErrorCode.BAD_IMAGE: 422,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_PAGES: 413,
}


def image_limits(settings: HttpSettings) -> ImageLimits:
    return ImageLimits(max_megapixels=settings.image_max_megapixels, max_pages=settings.image_max_pages)


def dpi_of(value: object, default: int = 150) -> int:
    """The DPI an image's pages are laid out at: the job's, where the form gives a number."""
    try:
        dpi = round(float(str(value)))
    except (TypeError, ValueError):
        return default
    return dpi if 36 <= dpi <= 600 else default


async def to_pdf(data: bytes, name: str, settings: HttpSettings, dpi: int) -> bytes:
    """``data`` as a PDF (images converted off the event loop: decoding them takes CPU)."""
    try:
        return await asyncio.to_thread(as_pdf, data, name, dpi=dpi, limits=image_limits(settings))
    except PermanentError as exc:
        raise ApiError(UPLOAD_STATUS.get(exc.code, 422), exc.code, exc.message) from exc


async def read_document(upload: StarletteUploadFile, settings: HttpSettings, *, dpi: int = 150) -> bytes | BinaryIO:
    """An uploaded PDF's file, or the PDF of an uploaded image, after the content-type and size checks.

    A PDF is not read into memory: its spooled file (on disk past a megabyte) goes on to S3 from
    where it stands, a part at a time. An image is read whole, to be converted.
    """
    name = upload.filename or "upload"
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    if content_type not in PDF_CONTENT_TYPES | IMAGE_CONTENT_TYPES:
        raise ApiError(
            415, ErrorCode.NOT_A_PDF, f"{name}: content type {content_type or 'none'!r} is not a PDF's or an image's"
        )
    limit = settings.http_max_upload_bytes
    file = upload.file
    size = await asyncio.to_thread(_size, file)
    if size > limit:
        raise ApiError(413, ErrorCode.FILE_TOO_LARGE, f"{name}: larger than {limit} bytes")
    head = await asyncio.to_thread(file.read, PDF_HEADER_WINDOW)
    await asyncio.to_thread(file.seek, 0)
    if head and image_kind(head) is None and is_pdf(head):
        return file
    # An image is read whole to be converted; what is neither is refused on its first bytes.
    data = await asyncio.to_thread(file.read) if image_kind(head) is not None else head
    return await to_pdf(data, name, settings, dpi)


def _size(file: BinaryIO) -> int:
    """The size of an upload's spooled file, which is left at its start."""
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    return size


def decode_base64(text: str) -> bytes | None:
    """The bytes of a base64 string (a ``data:`` URL's prefix dropped); None when it is not base64."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
