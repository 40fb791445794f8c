"""OCR engines behind one small interface: a page image in, text with boxes and confidence out.

* :class:`RapidOcrEngine`: CPU, the ONNX models packed in the rapidocr wheel;
  the default where there is no GPU, and the one the tests run.
* :class:`NemotronEngine`: NVIDIA nemotron-ocr on CUDA, weights from a local
  model directory; torch is imported only when one is made.
* :class:`FakeEngine`: a small honest fake for tests of the rest of pagewire.

Every engine returns boxes as page fractions and its text in reading order
(:mod:`consumer.layout`), whatever order the engine found the boxes in.
:class:`UprightEngine` wraps an engine so that pages scanned sideways or upside
down are detected and read turned upright (:func:`read_upright`);
:func:`make_engine` hands out engines so wrapped.

``read`` blocks; the worker calls it from a thread, one call at a time per
engine. Engine failures while reading raise
:class:`~schemas.errors.RetryableError` (``OCR_FAILED``); an engine that
cannot be made here raises :class:`~schemas.errors.PermanentError`
(``ENGINE_UNAVAILABLE``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_args

import numpy as np
import numpy.typing as npt

from consumer.layout import UPRIGHT_CONFIDENCE, blocks_to_text, detect_rotation, order_blocks, rotate_box
from consumer.marks import MARK_SCORE, LineMark, line_marks, with_mark
from schemas.errors import ErrorCode, PermanentError, RetryableError
from schemas.fields import clean_text
from schemas.messages import Block, Engine, page_fraction
from schemas.settings import OcrAlphabet

__all__ = [
    "FakeEngine",
    "NemotronEngine",
    "OcrEngine",
    "PageText",
    "RapidOcrEngine",
    "SimEngine",
    "TesseractEngine",
    "UprightEngine",
    "make_engine",
    "page_text_from_blocks",
    "read_each",
    "read_upright",
]

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
"""An RGB page image, ``uint8`` of shape (height, width, 3) (greyscale (height, width) is accepted)."""


@dataclass(frozen=True)
class PageText:
    """What an engine read on one page."""

    text: str
    """The page's text in reading order: words of a line joined by spaces, lines by newlines."""
    blocks: list[Block]
    """The boxes in reading order, in page fractions."""
    confidence: float
    """Mean confidence of the blocks, 0..1 (1.0 for a text layer, 0.0 when nothing was found)."""
    rotation: int = 0
    """How far the page's text was turned clockwise (0, 90, 180, 270); it was read turned back."""


class OcrEngine(Protocol):
    """An OCR engine: reads a page image, or a batch of them (a GPU reads a batch in little more than a page)."""

    name: Engine

    def read(self, image: Image) -> PageText:
        """Read an RGB page image; blocking."""
        ...

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Read page images together, one result each in their order; blocking."""
        ...


def read_each(engine: OcrEngine, images: Sequence[Image]) -> list[PageText]:
    """A batch read a page at a time: for engines that gain nothing from reading pages together."""
    return [engine.read(image) for image in images]


def page_text_from_blocks(blocks: list[Block]) -> PageText:
    """Put blocks in reading order and build the page's text and mean confidence from them."""
    lines = order_blocks(blocks)
    ordered = [block for line in lines for block in line]
    confidence = sum(b.confidence for b in ordered) / len(ordered) if ordered else 0.0
    return PageText(text=blocks_to_text(ordered), blocks=ordered, confidence=_unit(confidence))


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def _box_to_block(text: str, xs: list[float], ys: list[float], confidence: float, width: int, height: int) -> Block:
    """A block from a box's corner coordinates in pixels."""
    return Block(
        text=clean_text(text),
        bbox=(
            page_fraction(min(xs) / width),
            page_fraction(min(ys) / height),
            page_fraction(max(xs) / width),
            page_fraction(max(ys) / height),
        ),
        confidence=_unit(confidence),
    )


def _check_image(image: Image) -> tuple[int, int]:
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an RGB image (height, width, 3), got shape {image.shape}")
    return int(image.shape[0]), int(image.shape[1])


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), or the machine's count where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- rapidocr --------------------------------------------------------------------


def _check_cuda_provider() -> None:
    """Raise ``ENGINE_UNAVAILABLE`` unless onnxruntime can run on CUDA here: rapidocr would fall back to the
    CPU without a word, and a GPU worker reading on its CPU is far slower than it is sized for."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise PermanentError(
            ErrorCode.ENGINE_UNAVAILABLE,
            f"onnxruntime has no CUDA provider here ({', '.join(providers)}): install pagewire's gpu extra"
            " (onnxruntime-gpu) on a machine with an NVIDIA GPU",
        )


def rapidocr_params(threads: int) -> dict[str, Any]:
    """rapidocr's options as pagewire runs it, for ``threads`` intra-op threads."""
    from rapidocr import EngineType, LangDet, LangRec, ModelType, OCRVersion

    # Fixed-choice options take rapidocr's enums (strings are not accepted). Every
    # model choice is pinned to what the wheel carries: any other makes rapidocr
    # try a download.
    return {
        "Global.use_cls": False,
        "Global.log_level": "warning",
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        "Det.engine_type": EngineType.ONNXRUNTIME,
        "Det.lang_type": LangDet.CH,
        "Det.model_type": ModelType.SMALL,
        "Det.ocr_version": OCRVersion.PPOCRV6,
        "Rec.engine_type": EngineType.ONNXRUNTIME,
        "Rec.lang_type": LangRec.CH,
        "Rec.model_type": ModelType.SMALL,
        "Rec.ocr_version": OCRVersion.PPOCRV6,
    }


# OpenVINO reserves much more address space than onnxruntime: a peak of 4.1 to 5.6 GB over dense
# pages against 2.9 GB (2.2 GB resident against 1.5). Under a smaller RLIMIT_AS it fails mid-page
# ("can't alloc"), so there rapidocr stays on onnxruntime.
OPENVINO_ADDRESS_SPACE = 8 * 1024**3


def _backend(wanted: str) -> str:
    """``onnxruntime`` or ``openvino``; ``auto`` is OpenVINO where the package is installed and the
    process may map :data:`OPENVINO_ADDRESS_SPACE`."""
    if wanted not in ("auto", "onnxruntime", "openvino"):
        raise ValueError(f"unknown rapidocr backend {wanted!r}")
    if wanted != "auto":
        return wanted
    if importlib.util.find_spec("openvino") is None:
        return "onnxruntime"
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY and limit < OPENVINO_ADDRESS_SPACE:
        log.info("rapidocr on onnxruntime: an address space of %d MB is too small for OpenVINO", limit // 2**20)
        return "onnxruntime"
    return "openvino"


# rapidocr's recognition model reads Chinese and Japanese as well as Latin text: 18,710 classes, of
# which Latin, Greek, punctuation, symbols and the CTC blank are 1,750. Its last layer scores every
# class for every 8 pixels of a line; pages in Latin script need only these (docs/benchmarks.md).
ALPHABETS: tuple[str, ...] = get_args(OcrAlphabet)


def latin_classes(characters: Sequence[str]) -> list[int]:
    """The indices of the classes a ``latin`` reading keeps: the blank (0), and every character
    before the CJK blocks (U+2E80): Latin, Greek, punctuation, symbols; with the Latin
    ligatures (U+FB00 to U+FB4F)."""
    return [
        index
        for index, char in enumerate(characters)
        if index == 0 or (len(char) == 1 and (ord(char) < 0x2E80 or 0xFB00 <= ord(char) <= 0xFB4F))
    ]


class _KeptClasses:
    """A recognition session whose scores are cut to some classes after the model ran (onnxruntime,
    where the model cannot be cut): the same text as a cut model, not its saving."""

    def __init__(self, session: Any, classes: list[int]) -> None:
        self.session = session
        self.classes = np.asarray(classes)

    def __call__(self, batch: npt.NDArray[np.float32]) -> Any:
        kept = self.session(batch)[:, :, self.classes]
        # A softmax over the kept classes, as the cut model computes it.
        return kept / np.maximum(kept.sum(axis=2, keepdims=True), np.finfo(np.float32).tiny)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def _producer(node: Any) -> Any:
    """The node that feeds ``node``'s first input, past the Identity nodes of the ONNX export."""
    source = node.input_value(0).get_node()
    while source.get_type_name() == "Identity":
        source = source.input_value(0).get_node()
    return source


def _cut_classes(ov: Any, model: Any, classes: list[int]) -> Any:
    """``model`` with its last layer (MatMul, Add, Softmax) cut to ``classes``: the others are never scored."""
    softmax = _producer(model.outputs[0].get_node())
    add = _producer(softmax)
    matmul = _producer(add)
    if (softmax.get_type_name(), add.get_type_name(), matmul.get_type_name()) != ("Softmax", "Add", "MatMul"):
        raise PermanentError(ErrorCode.ENGINE_UNAVAILABLE, "rapidocr's recognition model ends unlike PP-OCR's")
    opset = importlib.import_module("openvino.opset13")
    weights = matmul.input_value(1).get_node().get_data()
    bias = add.input_value(1).get_node().get_data()
    scores = opset.add(
        opset.matmul(matmul.input_value(0), opset.constant(np.ascontiguousarray(weights[:, classes])), False, False),
        opset.constant(np.ascontiguousarray(bias[classes])),
    )
    return ov.Model([opset.result(opset.softmax(scores, -1))], model.get_parameters(), "recognition")


class _OpenVinoModel:
    """One of rapidocr's ONNX models compiled by OpenVINO for this CPU; called as rapidocr calls its sessions.

    ``classes``: cut the recognition model's last layer to these classes."""

    def __init__(self, model_path: str, threads: int, precision: str, classes: list[int] | None = None) -> None:
        try:
            ov = importlib.import_module("openvino")
        except ImportError as exc:
            raise PermanentError(ErrorCode.ENGINE_UNAVAILABLE, f"openvino is not installed: {exc}") from exc
        core = ov.Core()
        properties = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Kernels are kept per input shape, and recognition's widths vary with every batch: the
            # default of 5,000 lets a long-running worker's address space grow page after page.
            "CPU_RUNTIME_CACHE_CAPACITY": 200,
            # bf16 runs on the matrix units of CPUs that have them (AMX, AVX-512 BF16); OpenVINO
            # falls back to f32 on others.
            "INFERENCE_PRECISION_HINT": precision,
        }
        model = core.read_model(model_path)
        if classes is not None:
            model = _cut_classes(ov, model, classes)
        self._request = core.compile_model(model, "CPU", properties).create_infer_request()

    def __call__(self, batch: npt.NDArray[np.float32]) -> Any:
        self._request.infer([batch])
        return self._request.get_output_tensor().data.copy()


# rapidocr turns every crop at least this much taller than wide a quarter turn anticlockwise before
# recognition, which sets upright a line that runs down the page and turns one that runs up it (an
# arXiv stamp, a thumb tab, a print slug) upside down.
TALL = 1.5


def is_tall(box: npt.NDArray[np.float32]) -> bool:
    """Whether rapidocr turns this detected box (four corners) before recognition, as it decides."""
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    return width > 0 and height / width >= TALL


@dataclass
class Piece:
    """A recognised box in pixels; ``upward`` for text that runs up the page, ``downward`` down it."""

    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    score: float
    run: str = ""  # "", "upward" or "downward"


def join_vertical_runs(pieces: list[Piece]) -> list[Piece]:
    """Join the pieces of one line of text that runs up or down the page into one, in its own order.

    Detection cuts such a line where its words stand apart ("arXiv:1601.03642v1 [cs.CV]", "12 Jan",
    "2016"); read top to bottom, a line that runs up the page would come out backwards. Pieces join
    when they run the same way, share most of their width, and the gap between them is under twice
    that width (the line's height).
    """
    # A tall box of a character or two is a digit or a mark standing alone (a column of "1"s in a
    # table), not a piece of a line.
    joining = [piece for piece in pieces if piece.run and len(piece.text.strip()) >= 3]
    out = [piece for piece in pieces if not (piece.run and len(piece.text.strip()) >= 3)]
    for run in ("upward", "downward"):
        column: list[Piece] = []
        for piece in sorted((p for p in joining if p.run == run), key=lambda p: p.y0):
            last = column[-1] if column else None
            width = min(piece.x1 - piece.x0, last.x1 - last.x0) if last else 0.0
            overlap = min(piece.x1, last.x1) - max(piece.x0, last.x0) if last else 0.0
            if last and overlap >= width / 2 and piece.y0 - last.y1 <= 2 * max(width, 1.0):
                column.append(piece)
                continue
            if column:
                out.append(_joined(column, run))
            column = [piece]
        if column:
            out.append(_joined(column, run))
    return out


def _joined(column: list[Piece], run: str) -> Piece:
    ordered = column[::-1] if run == "upward" else column
    return Piece(
        min(p.x0 for p in column),
        column[0].y0,
        max(p.x1 for p in column),
        max(p.y1 for p in column),
        " ".join(p.text for p in ordered),
        sum(p.score for p in column) / len(column),
        run,
    )


class RapidOcrEngine:
    """rapidocr 3.x on CPU with the PP-OCRv6 small models packed in its wheel (no download).

    The models are loaded, and one small image read, at construction: rapidocr
    loads lazily on the first call otherwise, and the first page of a task
    should not pay for it. The angle classifier is off: it turns some upright
    lines upside down (order-free error 0.040 with it, 0.0018 without).

    Where the ``openvino`` package is installed the same two models run on
    OpenVINO (``backend="auto"``): detection in f32 at about a third of
    onnxruntime's CPU time, recognition (most of a page's cost) in bf16 at
    about half. Detection stays f32 because its boxes in bf16 shift enough to
    change a few characters a page; recognition in bf16 reads the corpus's
    scans as well as f32 does (docs/benchmarks.md).

    With ``alphabet="latin"`` (the default) recognition scores only the
    characters of Latin-script text (:func:`latin_classes`), not the model's
    Chinese and Japanese ones: on OpenVINO its last layer is cut to them, which
    makes a page cheaper; ``"all"`` reads every script the model knows.
    """

    name: Engine = Engine.RAPIDOCR

    def __init__(
        self,
        threads: int = 0,
        options: dict[str, Any] | None = None,
        *,
        spinning: bool = False,
        backend: str = "auto",
        det_precision: str = "f32",
        rec_precision: str = "bf16",
        cuda: bool = False,
        alphabet: str = "latin",
    ) -> None:
        """Load the models; ``threads`` is the inference thread count (0: the cores this process may use).

        ``options`` overrides rapidocr's own (dotted keys, ``"Rec.rec_batch_num": 6``) over
        :func:`rapidocr_params`; ``spinning`` lets idle onnxruntime threads spin; ``backend`` is
        ``onnxruntime``, ``openvino`` or ``auto``; the precisions are OpenVINO's (``f32``, ``bf16``).
        All of these are for measuring variants (``scripts/profile_ocr.py``); the worker keeps the defaults.
        ``cuda``: run them on onnxruntime's CUDA provider (``onnxruntime-gpu``, the ``gpu`` extra), the
        same models and so the same text as on the CPU, with no download. ``alphabet``: ``latin`` or
        ``all``, the characters recognition may read.
        """
        if alphabet not in ALPHABETS:
            raise ValueError(f"unknown alphabet {alphabet!r}: {' or '.join(ALPHABETS)}")
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise PermanentError(ErrorCode.ENGINE_UNAVAILABLE, f"rapidocr is not installed: {exc}") from exc
        if cuda:
            self.name = Engine.RAPIDOCR_GPU
            _check_cuda_provider()
        cores = available_cores()
        # rapidocr ignores a count above os.cpu_count(), silently; keep it in range.
        self.threads = min(threads or cores, os.cpu_count() or cores)
        params = rapidocr_params(self.threads) | {"EngineConfig.onnxruntime.use_cuda": cuda} | (options or {})
        self.cuda = cuda
        self.backend = "onnxruntime" if cuda else _backend(backend)
        self.precisions = (det_precision, rec_precision)
        self.alphabet = alphabet
        started = time.perf_counter()
        try:
            self._ocr = RapidOCR(params=params)
            self._read_both_ways()
            self._warm_up()
            self._renew_sessions(spinning)
        except PermanentError:
            raise
        except Exception as exc:
            raise PermanentError(ErrorCode.ENGINE_UNAVAILABLE, f"rapidocr failed to load its models: {exc}") from exc
        log.info("rapidocr ready in %.2f s with %d threads", time.perf_counter() - started, self.threads)

    def _renew_sessions(self, spinning: bool) -> None:
        """Remake the detection and recognition sessions with what rapidocr's own options cannot say.

        onnxruntime's intra-op threads spin while they wait for work by default:
        on a worker whose cores are shared that burns CPU time for nothing.
        With OpenVINO, the same ONNX files are compiled for this CPU instead.
        """
        import onnxruntime as ort

        classes = None
        if self.alphabet == "latin":
            decoder: Any = self._ocr.text_rec.postprocess_op  # type: ignore[attr-defined]
            classes = latin_classes(decoder.character)
            decoder.character = [decoder.character[index] for index in classes]
            decoder.dict = {char: index for index, char in enumerate(decoder.character)}
        stages: list[Any] = [self._ocr.text_det, self._ocr.text_rec]
        for stage, precision, kept in zip(stages, self.precisions, (None, classes), strict=True):
            holder = stage.session
            model_path = holder.session._model_path
            if self.backend == "openvino":
                stage.session = _OpenVinoModel(model_path, self.threads, precision, kept)
                continue
            options = ort.SessionOptions()
            options.log_severity_level = 4
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.cuda else ["CPUExecutionProvider"]
            holder.session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
            if kept is not None:
                stage.session = _KeptClasses(holder, kept)
        self._warm_up()

    def _read_both_ways(self) -> None:
        """Hook rapidocr's cropping and recognition: read each tall crop turned both ways and keep
        the reading the model is surer of, noting which crops read upward (turned the other way from
        rapidocr's turn; :meth:`read` uses it), and open each line with the list mark found before
        it on the page (:func:`consumer.marks.line_marks`)."""
        ocr: Any = self._ocr
        crop_text_regions, recognize_txt = ocr.crop_text_regions, ocr.recognize_txt
        tall: list[bool] = []
        self._runs: list[str] = []

        marks: list[LineMark | None] = []

        def crop(img: Any, boxes: Any) -> Any:
            tall[:] = [is_tall(box) for box in boxes]
            # The model drops most list marks (squares, boxes, large discs): they are found on the page.
            marks[:] = line_marks(img, boxes, tall)
            return crop_text_regions(img, boxes)

        def recognize(crops: list[Any]) -> Any:
            result = recognize_txt(crops)
            turned = [i for i, is_it in enumerate(tall) if is_it and i < len(crops)]
            runs = [""] * len(crops)
            texts, scores = list(result.txts), list(result.scores)
            # Where most lines are tall the page itself lies on its side, and is read again turned.
            if turned and 2 * len(turned) < len(crops):
                for i in turned:
                    runs[i] = "downward"
                other = recognize_txt([np.ascontiguousarray(np.rot90(crops[i], 2)) for i in turned])
                for j, i in enumerate(turned):
                    if other.scores[j] > scores[i]:
                        texts[i], scores[i], runs[i] = other.txts[j], other.scores[j], "upward"
            for i, mark in enumerate(marks[: len(crops)]):
                if mark is None or runs[i]:
                    continue
                if mark.role == "opens":
                    texts[i] = with_mark(texts[i], mark.char)
                else:  # a mark boxed by itself: its shape, not the model's reading, says what it is
                    texts[i] = mark.char if mark.role == "alone" else ""
                    scores[i] = max(scores[i], MARK_SCORE)
            result.txts, result.scores = tuple(texts), scores
            self._runs = [run for run, score in zip(runs, result.scores, strict=True) if score >= ocr.text_score]
            return result

        ocr.crop_text_regions, ocr.recognize_txt = crop, recognize

    def _warm_up(self) -> None:
        """Read a small image with a word on it, so detection and recognition both load now."""
        import cv2

        image = np.full((64, 320, 3), 255, dtype=np.uint8)
        cv2.putText(image, "pagewire", (10, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
        self._ocr(image)

    def read(self, image: Image) -> PageText:
        """Read an RGB page image (blocking, seconds per page)."""
        height, width = _check_image(image)
        # rapidocr takes a 3-channel array as BGR (OpenCV's order); pdfium renders RGB.
        bgr = np.ascontiguousarray(image[:, :, ::-1]) if image.ndim == 3 else image
        try:
            result = self._ocr(bgr)
        except Exception as exc:
            raise RetryableError(ErrorCode.OCR_FAILED, f"rapidocr failed: {exc}") from exc
        boxes = getattr(result, "boxes", None)
        texts = getattr(result, "txts", None)
        scores = getattr(result, "scores", None)
        if boxes is None or texts is None or scores is None:
            return PageText(text="", blocks=[], confidence=0.0)
        # The runs were noted for the readings rapidocr keeps, in its order; where they do not line
        # up (rapidocr filtered otherwise), every piece stands alone.
        runs = self._runs if len(self._runs) == len(texts) else [""] * len(texts)
        pieces = [
            Piece(
                min(float(p[0]) for p in box),
                min(float(p[1]) for p in box),
                max(float(p[0]) for p in box),
                max(float(p[1]) for p in box),
                text,
                float(score),
                run,
            )
            for box, text, score, run in zip(boxes, texts, scores, runs, strict=True)
            if text.strip()
        ]
        blocks = [
            _box_to_block(p.text, [p.x0, p.x1], [p.y0, p.y1], p.score, width, height)
            for p in join_vertical_runs(pieces)
        ]
        return page_text_from_blocks(blocks)

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Page after page: rapidocr takes one image a call, and already batches the line crops of a page."""
        return read_each(self, images)


# --- tesseract -------------------------------------------------------------------

# Columns of tesseract's TSV output, one row per page, block, paragraph, line and word.
TSV_COLUMNS = (
    "level",
    "page_num",
    "block_num",
    "par_num",
    "line_num",
    "word_num",
    "left",
    "top",
    "width",
    "height",
    "conf",
    "text",
)
TSV_WORD_LEVEL = 5


def tsv_to_blocks(tsv: str, width: int, height: int) -> list[Block]:
    """tesseract's TSV as one block per text line, in page fractions of a ``width`` x ``height`` image.

    Words (level 5) are gathered by their block, paragraph and line numbers;
    a line's box is the union of its words' boxes (tighter than tesseract's
    line row, which spans leading space) and its confidence the mean of its
    words' (tesseract gives 0..100). Rows without text are skipped.
    """
    lines: dict[tuple[int, int, int, int], list[tuple[str, int, int, int, int, float]]] = {}
    rows = tsv.splitlines()
    for row in rows[1:] if rows and rows[0].startswith("level") else rows:
        cells = row.split("\t")
        if len(cells) < len(TSV_COLUMNS):
            continue
        try:
            level, page, block, par, line = (int(c) for c in cells[:5])
            left, top, w, h = (int(c) for c in cells[6:10])
            conf = float(cells[10])
        except ValueError:
            continue
        # The text is the last column; a tab inside it (never seen) would stay in the word.
        text = "\t".join(cells[11:]).strip()
        if level != TSV_WORD_LEVEL or not text:
            continue
        lines.setdefault((page, block, par, line), []).append((text, left, top, left + w, top + h, conf))
    blocks = []
    for words in lines.values():
        confidences = [conf for *_, conf in words if conf >= 0]
        confidence = sum(confidences) / len(confidences) / 100 if confidences else 0.0
        xs = [float(v) for _, x0, _, x1, _, _ in words for v in (x0, x1)]
        ys = [float(v) for _, _, y0, _, y1, _ in words for v in (y0, y1)]
        blocks.append(_box_to_block(" ".join(w[0] for w in words), xs, ys, confidence, width, height))
    return blocks


class TesseractEngine:
    """tesseract 4 or 5 on CPU through its command-line binary (Debian's ``tesseract-ocr``), one thread a page.

    The page goes in as a PNG on stdin and comes back as TSV on stdout
    (``--psm 3``: tesseract's own page segmentation), read as one block per
    line (:func:`tsv_to_blocks`) and put in pagewire's reading order like every
    engine. Its CPU time is the child process's: count it with
    ``resource.getrusage(RUSAGE_CHILDREN)``. A binary rather than tesserocr:
    nothing to build or pin, and the same tesseract OCRmyPDF users run.
    """

    name: Engine = Engine.TESSERACT

    def __init__(
        self, *, binary: str = "tesseract", language: str = "eng", psm: int = 3, timeout_s: float = 300.0
    ) -> None:
        """Find the binary and its language data; ``ENGINE_UNAVAILABLE`` where either is missing."""
        path = shutil.which(binary)
        if path is None:
            raise PermanentError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"no {binary!r} binary on PATH: install tesseract (Debian: apt-get install tesseract-ocr)",
            )
        self.binary = path
        self.language = language
        self.psm = psm
        self.timeout_s = timeout_s
        # tesseract's OpenMP threads compete with the worker's other work for the same cores
        # and buy little on one page: one thread a page, as OCRmyPDF runs it by default.
        self._env = os.environ | {"OMP_THREAD_LIMIT": "1"}
        try:
            listed = subprocess.run(
                [path, "--list-langs"], capture_output=True, text=True, timeout=30, env=self._env, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PermanentError(ErrorCode.ENGINE_UNAVAILABLE, f"{path} does not run: {exc}") from exc
        languages = {line.strip() for line in listed.stdout.splitlines()[1:]}
        if listed.returncode != 0 or language not in languages:
            raise PermanentError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"tesseract has no {language!r} language data (it has: {', '.join(sorted(languages)) or 'none'});"
                f" Debian: apt-get install tesseract-ocr-{language}",
            )

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Page after page: tesseract reads one image a run."""
        return read_each(self, images)

    def read(self, image: Image) -> PageText:
        """Read an RGB page image in a tesseract process (blocking, seconds per page)."""
        import cv2

        height, width = _check_image(image)
        # Grey, as tesseract reads it anyway: a third of the bytes to encode and pipe.
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        ok, png = cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RetryableError(ErrorCode.OCR_FAILED, "tesseract: the page image could not be encoded")
        command = [self.binary, "stdin", "stdout", "-l", self.language, "--psm", str(self.psm), "tsv"]
        try:
            done = subprocess.run(
                command, input=png.tobytes(), capture_output=True, timeout=self.timeout_s, env=self._env, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RetryableError(ErrorCode.OCR_FAILED, f"tesseract took more than {self.timeout_s:g} s") from exc
        except OSError as exc:
            raise RetryableError(ErrorCode.OCR_FAILED, f"tesseract failed to start: {exc}") from exc
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip().splitlines()
            raise RetryableError(
                ErrorCode.OCR_FAILED, f"tesseract exited {done.returncode}: {message[-1] if message else ''}"
            )
        return page_text_from_blocks(tsv_to_blocks(done.stdout.decode(errors="replace"), width, height))


# --- nemotron-ocr ----------------------------------------------------------------

# The files nemotron-ocr 2.0.2 needs in its model directory (its CHECKPOINT_FILES).
# Given a directory that lacks any of them, NemotronOCR silently downloads a
# checkpoint from Hugging Face instead (by default a different model, v2
# multilingual), which must not happen on a worker: check first.
NEMOTRON_FILES = ("detector.pth", "recognizer.pth", "relational.pth", "charset.txt", "model_config.json")


class NemotronEngine:
    """NVIDIA nemotron-ocr 2.0.2 on CUDA, with weights from a local model directory.

    Written against ``nemotron_ocr.inference.pipeline.NemotronOCR(model_dir=...)``,
    called on an RGB (H, W, 3) ``uint8`` array with ``merge_level="sentence"``
    and returning dicts with ``text``, ``confidence`` and a box as fractions of
    the image: ``left``, ``right``, and ``upper``/``lower``, which the pipeline
    fills with the larger and the smaller y (both are read as an unordered
    pair). The package's CUDA kernels are built for compute capability 8.0 and
    newer, and its CUDA 13 runtime needs an R580 or newer driver.
    """

    name: Engine = Engine.NEMOTRON

    MIN_COMPUTE_CAPABILITY = (8, 0)

    def __init__(self, model_dir: Path | None) -> None:
        """Load the models onto the GPU; raises ``ENGINE_UNAVAILABLE`` when the package, weights or CUDA are missing."""
        try:
            torch = importlib.import_module("torch")
            pipeline = importlib.import_module("nemotron_ocr.inference.pipeline")
        except ImportError as exc:
            raise PermanentError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"nemotron-ocr is not installed ({exc}); install pagewire with the gpu extra on a CUDA machine",
            ) from exc
        if model_dir is None:
            raise PermanentError(
                ErrorCode.ENGINE_UNAVAILABLE, "no nemotron-ocr model directory: set NEMOTRON_OCR_MODEL_DIR"
            )
        missing = [name for name in NEMOTRON_FILES if not (model_dir / name).is_file()]
        if missing:
            raise PermanentError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"nemotron-ocr weights incomplete in {model_dir}: {', '.join(missing)} missing"
                f" (it needs {', '.join(NEMOTRON_FILES)})",
            )
        self._check_cuda(torch)
        try:
            # 2.0.2's NemotronOCRV2 reads a list of images in one pass (its detector batches them); a
            # release without it reads one image a call.
            try:
                batched = importlib.import_module("nemotron_ocr.inference.pipeline_v2").NemotronOCRV2
            except (ImportError, AttributeError):
                batched = None
            self._batched = batched is not None
            self._ocr = (batched or pipeline.NemotronOCR)(model_dir=str(model_dir))
        except Exception as exc:
            raise PermanentError(
                ErrorCode.ENGINE_UNAVAILABLE, f"nemotron-ocr failed to load: {exc}{self._cap_hint()}"
            ) from exc

    @classmethod
    def _check_cuda(cls, torch: Any) -> None:
        """Raise ``ENGINE_UNAVAILABLE`` with the likely cause when CUDA cannot run the models here."""
        try:
            available = bool(torch.cuda.is_available())
            if not available:
                # is_available() hides why; init() raises with the driver's own reason.
                torch.cuda.init()
        except Exception as exc:
            reason = str(exc)
        else:
            reason = "" if available else "torch sees no CUDA device"
        if reason:
            hint = cls._cap_hint() or (
                "; check that the container is given a GPU (nvidia.com/gpu, or --gpus with the NVIDIA Container"
                " Toolkit) and that the host driver is R580 or newer (CUDA 13)"
            )
            raise PermanentError(ErrorCode.ENGINE_UNAVAILABLE, f"nemotron-ocr cannot start CUDA ({reason}){hint}")
        major, minor = (int(v) for v in torch.cuda.get_device_capability(0))
        if (major, minor) < cls.MIN_COMPUTE_CAPABILITY:
            want = ".".join(map(str, cls.MIN_COMPUTE_CAPABILITY))
            raise PermanentError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"nemotron-ocr needs a GPU of compute capability {want} or newer;"
                f" {torch.cuda.get_device_name(0)} is {major}.{minor}",
            )

    @staticmethod
    def _address_space_cap_mb() -> int | None:
        """This process's address-space limit (RLIMIT_AS) in MB, or None when there is none."""
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        return None if soft == resource.RLIM_INFINITY else soft // (1024 * 1024)

    @classmethod
    def _cap_hint(cls) -> str:
        """Why CUDA fails under an address-space cap, or "" when the process has none.

        A CUDA context reserves tens of GB of virtual address space before it
        allocates anything, so under the page process's cap CUDA fails to start
        and torch reports no device or "out of memory" instead of the cause.
        """
        cap = cls._address_space_cap_mb()
        if cap is None:
            return ""
        return (
            f"; the likely cause: this process's address space is capped at {cap} MB (RLIMIT_AS, set from"
            " PAGEWIRE_PAGE_MEMORY_MB), far less than a CUDA context reserves; set PAGEWIRE_PAGE_MEMORY_MB=0"
            " on GPU workers and let the container's memory limit bound them"
        )

    def read(self, image: Image) -> PageText:
        """Read an RGB page image on the GPU."""
        return self.read_batch([image])[0]

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Read page images on the GPU, in one pass where the package can batch them."""
        rgbs = []
        for image in images:
            _check_image(image)
            rgbs.append(np.ascontiguousarray(image if image.ndim == 3 else np.stack([image] * 3, axis=-1)))
        try:
            if self._batched:
                pages = self._ocr(rgbs, merge_level="sentence")
            else:
                pages = [self._ocr(rgb, merge_level="sentence") for rgb in rgbs]
        except Exception as exc:
            raise RetryableError(ErrorCode.OCR_FAILED, f"nemotron-ocr failed: {exc}") from exc
        return [self._page(predictions) for predictions in pages]

    @staticmethod
    def _page(predictions: Sequence[dict[str, Any]]) -> PageText:
        blocks = []
        for pred in predictions:
            text = str(pred.get("text", ""))
            if not text.strip():
                continue
            # Boxes are already image fractions: a unit "image" of 1 x 1.
            xs = [float(pred["left"]), float(pred["right"])]
            ys = [float(pred["upper"]), float(pred["lower"])]
            blocks.append(_box_to_block(text, xs, ys, float(pred.get("confidence", 0.0)), 1, 1))
        return page_text_from_blocks(blocks)


# --- pages scanned sideways or upside down ---------------------------------------------

# A turned reading must beat the upright one by this much mean confidence to be taken:
# turned readings of an upright page can come close on a poor scan, never by this margin.
ROTATION_MARGIN = 0.05


def read_upright(engine: OcrEngine, image: Image, first: PageText | None = None) -> PageText:
    """Read a page image; if it looks sideways or upside down, read it turned back too and keep the better.

    An upright page costs one reading (and nothing more unless its mean
    confidence is under :data:`consumer.layout.UPRIGHT_CONFIDENCE`); a turned
    page costs two or three. Boxes of a turned reading are mapped back to the
    page as displayed; the text keeps the upright reading order. ``first``: the
    upright reading, where it was made already (in a batch).
    """
    first = first or engine.read(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    candidates = detect_rotation(first.blocks, width, height)
    # A sideways reading has its lines in the wrong order even where each line was read
    # right (rapidocr turns tall line crops itself: one way round it reads them at 0.99),
    # so a turned reading need only be about as confident; otherwise it must do better.
    sideways = 90 in candidates
    bar = first.confidence - ROTATION_MARGIN if sideways else first.confidence + ROTATION_MARGIN
    best = first
    for rotation in candidates:
        # np.rot90 turns counter-clockwise: k quarter turns undo text turned k quarters clockwise.
        turned = engine.read(np.ascontiguousarray(np.rot90(image, rotation // 90)))
        if turned.confidence > bar and (best is first or turned.confidence > best.confidence):
            best = PageText(text=turned.text, blocks=turned.blocks, confidence=turned.confidence, rotation=rotation)
        if best is not first and best.confidence >= UPRIGHT_CONFIDENCE:
            break  # read well: the other quarter turn would only cost another reading
    if best.rotation == 0:
        return first
    blocks = [block.model_copy(update={"bbox": rotate_box(block.bbox, best.rotation)}) for block in best.blocks]
    log.info(
        "page read turned back by %d degrees (confidence %.2f, upright %.2f)",
        best.rotation,
        best.confidence,
        first.confidence,
    )
    return PageText(text=best.text, blocks=blocks, confidence=best.confidence, rotation=best.rotation)


class UprightEngine:
    """An OCR engine that detects pages turned 90, 180 or 270 degrees and reads them upright (:func:`read_upright`)."""

    def __init__(self, inner: OcrEngine) -> None:
        """Wrap ``inner``; the wrapper has its name."""
        self.inner = inner
        self.name: Engine = inner.name

    def read(self, image: Image) -> PageText:
        """Read the page the right way up."""
        return read_upright(self.inner, image)

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Read the pages upright in one batch; only a page that looks turned is read again, alone."""
        firsts = self.inner.read_batch(images)
        return [read_upright(self.inner, image, first) for image, first in zip(images, firsts, strict=True)]


# --- a fake for tests ----------------------------------------------------------------


@dataclass
class FakeEngine:
    """A test double: no model, instant, deterministic. Counts its calls.

    Without ``text`` it describes the image it was given (size and mean
    brightness), so a test can tell which page reached it. ``errors`` are
    raised one per call, in order, before it starts answering (a flaky engine).
    """

    text: str | None = None
    confidence: float = 0.9
    name: Engine = Engine.RAPIDOCR
    errors: list[Exception] = field(default_factory=list)
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def read(self, image: Image) -> PageText:
        """Return the fixed or image-derived text as one block covering the page."""
        height, width = _check_image(image)
        with self._lock:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
        text = self.text if self.text is not None else f"image {width}x{height} mean {float(image.mean()):.1f}"
        if not text:
            return PageText(text="", blocks=[], confidence=0.0)
        block = Block(text=text, bbox=(0.0, 0.0, 1.0, 1.0), confidence=self.confidence)
        return PageText(text=text, blocks=[block], confidence=self.confidence)

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Each image as :meth:`read` reads it."""
        return read_each(self, images)


# --- a simulated device ----------------------------------------------------------------


class SimEngine:
    """A device that reads nothing and takes the time a GPU would: ``batch_ms`` a batch plus ``page_ms`` a page.

    For the tests and the benchmark of the batched pipeline where no GPU is: whether the CPUs
    render fast enough to keep a device busy does not depend on what the device computes. Each
    page's text names its size, so a test can tell which page came back where. ``busy_s`` adds
    up the time it was reading.
    """

    name: Engine = Engine.SIM

    def __init__(self, batch_ms: float = 50.0, page_ms: float = 10.0) -> None:
        """A device of this speed."""
        self.batch_ms = batch_ms
        self.page_ms = page_ms
        self.busy_s = 0.0

    def read(self, image: Image) -> PageText:
        """One page as a batch of one."""
        return self.read_batch([image])[0]

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Wait as long as the device would take, and describe each image."""
        sizes = [_check_image(image) for image in images]
        seconds = (self.batch_ms + self.page_ms * len(images)) / 1000
        time.sleep(seconds)
        self.busy_s += seconds
        out = []
        for height, width in sizes:
            text = f"simulated page {width}x{height}"
            out.append(
                PageText(
                    text=text, blocks=[Block(text=text, bbox=(0.0, 0.0, 1.0, 1.0), confidence=1.0)], confidence=1.0
                )
            )
        return out


def make_engine(
    engine: Engine,
    *,
    threads: int = 0,
    model_dir: Path | None = None,
    sim_ms: tuple[float, float] = (50.0, 10.0),
    alphabet: str = "latin",
) -> OcrEngine:
    """Make the OCR engine for ``engine``; ``text`` and ``auto`` are not OCR engines.

    ``sim_ms``: the simulated device's milliseconds a batch and a page; ``alphabet``: rapidocr's
    (``latin`` or ``all``, :class:`RapidOcrEngine`).

    The engine comes wrapped in :class:`UprightEngine`, so turned pages are read the right way up.
    """
    if engine == Engine.RAPIDOCR:
        return UprightEngine(RapidOcrEngine(threads=threads, alphabet=alphabet))
    if engine == Engine.RAPIDOCR_GPU:
        return UprightEngine(RapidOcrEngine(threads=threads, cuda=True, alphabet=alphabet))
    if engine == Engine.SIM:
        return SimEngine(*sim_ms)  # nothing is read, so nothing is turned
    if engine == Engine.NEMOTRON:
        return UprightEngine(NemotronEngine(model_dir))
    if engine == Engine.TESSERACT:
        return UprightEngine(TesseractEngine())
    raise ValueError(f"{engine} is not an OCR engine")
