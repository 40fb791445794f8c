"""Images as input: PNG, JPEG and TIFF (multi-page too) become the pages of a PDF.

Everything after the producer reads PDFs only (planner, workers, results), so
an image is turned into a PDF at the door and then follows the normal path:
one path to test, one cache, one result format. img2pdf embeds JPEG and most
PNG and TIFF data as it is, without decoding and re-encoding it, so nothing is
lost on the way; what it cannot embed (PNG with an alpha channel, odd TIFF
compressions) it converts losslessly.

Each page is laid out at the job's DPI, so rendering it back at that DPI gives
the image's own pixels: no scaling between the scan and the OCR engine,
whatever resolution the file claims (phone pictures often claim 72).

Before conversion every frame is decoded once, with limits on pixels and
frames checked first: a file that does not decode is ``bad_image`` here, at
submit time, not a page failure later; a decompression bomb is
``image_too_large`` before its pixels are in memory.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Final

from schemas.errors import ErrorCode, PermanentError

log = logging.getLogger(__name__)

PDF_MAGIC: Final = b"%PDF-"
# PDF readers accept junk before the header within the first kilobyte; so does pagewire everywhere.
PDF_HEADER_WINDOW: Final = 1024
_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)
IMAGE_CONTENT_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/tiff"})
IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageLimits:
    """How large an image may be: pixels per frame and frames per file."""

    max_megapixels: float = 50.0
    max_pages: int = 500


def image_kind(head: bytes) -> str | None:
    """``png``, ``jpeg`` or ``tiff`` from a file's first bytes; None for anything else."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def is_pdf(head: bytes) -> bool:
    return PDF_MAGIC in head[:PDF_HEADER_WINDOW]


def pdf_name(name: str) -> str:
    """The name a converted image's PDF is known by: ``scan.png`` stays ``scan.png`` for people,
    but a key or download of the PDF needs ``.pdf``."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.pdf" if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else f"{name}.pdf"


def _check_frames(data: bytes, name: str, limits: ImageLimits) -> int:
    """Decode every frame once, after checking its size; returns the number of frames."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = int(limits.max_megapixels * 1_000_000)
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = int(getattr(image, "n_frames", 1))
            if frames > limits.max_pages:
                raise PermanentError(
                    ErrorCode.TOO_MANY_PAGES,
                    f"{name}: {frames} frames, more than {limits.max_pages} (PAGEWIRE_IMAGE_MAX_PAGES)",
                )
            for index in range(frames):
                image.seek(index)
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise PermanentError(ErrorCode.BAD_IMAGE, f"{name}: frame {index + 1} has no pixels")
                if width * height > max_pixels:
                    raise PermanentError(
                        ErrorCode.IMAGE_TOO_LARGE,
                        f"{name}: frame {index + 1} is {width}x{height} pixels, more than "
                        f"{limits.max_megapixels:g} megapixels (PAGEWIRE_IMAGE_MAX_MEGAPIXELS)",
                    )
                image.load()  # a truncated or corrupt frame fails here, not in a worker later
    except PermanentError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports broken data as any of these, depending on the format and where it breaks.
        raise PermanentError(ErrorCode.BAD_IMAGE, f"{name}: the image does not decode ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise PermanentError(ErrorCode.IMAGE_TOO_LARGE, f"{name}: {exc}") from exc
    return frames


def _lossless_copy(data: bytes) -> list[bytes]:
    """Each frame as a PNG Pillow writes (lossless), for what img2pdf will not embed as it is."""
    from PIL import Image, ImageSequence

    out = []
    with Image.open(io.BytesIO(data)) as image:
        for frame in ImageSequence.Iterator(image):
            mode = frame.mode if frame.mode in ("1", "L", "RGB", "RGBA", "LA") else "RGBA"
            buffer = io.BytesIO()
            frame.convert(mode).save(buffer, "PNG")
            out.append(buffer.getvalue())
    return out


def image_to_pdf(data: bytes, name: str = "image", *, dpi: int = 150, limits: ImageLimits | None = None) -> bytes:
    """A PDF with one page per frame of a PNG, JPEG or TIFF image, laid out at ``dpi``.

    Raises ``PermanentError``: ``bad_image`` (not an image we take, or it does
    not decode), ``image_too_large`` (a frame over the pixel limit),
    ``too_many_pages`` (more frames than the limit).
    """
    import img2pdf

    limits = limits or ImageLimits()
    if image_kind(data[:16]) is None:
        raise PermanentError(ErrorCode.BAD_IMAGE, f"{name}: not a PNG, JPEG or TIFF image")
    frames = _check_frames(data, name, limits)
    layout = img2pdf.get_fixed_dpi_layout_fun((dpi, dpi))
    try:
        pdf = img2pdf.convert(data, layout_fun=layout)
    except Exception as exc:  # img2pdf's own errors share no base class; each means "cannot embed as is"
        log.info("%s: img2pdf cannot embed it as it is (%s); converting it losslessly", name, exc)
        try:
            pdf = img2pdf.convert(_lossless_copy(data), layout_fun=layout)
        except Exception as again:
            raise PermanentError(ErrorCode.BAD_IMAGE, f"{name}: cannot make a PDF of it ({again})") from again
    if not isinstance(pdf, bytes):  # img2pdf returns None only when given an output file
        raise PermanentError(ErrorCode.BAD_IMAGE, f"{name}: cannot make a PDF of it")
    log.debug("%s: %d frame(s) made a %d-byte PDF", name, frames, len(pdf))
    return pdf


def as_pdf(data: bytes, name: str = "upload", *, dpi: int = 150, limits: ImageLimits | None = None) -> bytes:
    """``data`` itself when it is a PDF, the PDF of it when it is an image; otherwise ``not_a_pdf``."""
    if not data:
        raise PermanentError(ErrorCode.EMPTY_FILE, f"{name}: the file is empty")
    # The image's magic sits at byte 0 and is checked first; a PDF's header may sit anywhere in its first KiB.
    if image_kind(data[:16]) is not None:
        return image_to_pdf(data, name, dpi=dpi, limits=limits)
    if is_pdf(data):
        return data
    raise PermanentError(ErrorCode.NOT_A_PDF, f"{name}: neither a PDF (%PDF- header) nor a PNG, JPEG or TIFF image")
