"""The nemotron-ocr adapter, on the CPU, against stand-ins shaped like torch and nemotron-ocr 2.0.2.

CPU machines never install the ``gpu`` extra, so ``torch`` and
``nemotron_ocr.inference.pipeline`` are replaced in ``sys.modules`` by small
fakes that keep the real interfaces: ``NemotronOCR(model_dir=None,
infer_length=None, *, lang=None, ...)`` that turns to a Hub download when the
directory lacks one of its checkpoint files, and ``__call__(image,
merge_level=...)`` returning dicts with ``text``, ``confidence`` and ``left``,
``right``, ``upper``, ``lower`` as fractions of the image, ``upper`` being the
larger y (pipeline.py of nemotron-ocr 2.0.2).
"""

from __future__ import annotations

import resource
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from consumer.engines import NEMOTRON_FILES, NemotronEngine, UprightEngine, make_engine
from schemas.errors import ErrorCode, PermanentError, RetryableError
from schemas.messages import Engine

# nemotron_ocr.inference.pipeline.CHECKPOINT_FILES in 2.0.2.
CHECKPOINT_FILES = ["detector.pth", "recognizer.pth", "relational.pth", "charset.txt", "model_config.json"]
MERGE_LEVELS = {"word", "sentence", "paragraph"}


class FakeCuda:
    """``torch.cuda`` as far as the adapter uses it."""

    def __init__(self) -> None:
        self.available = True
        self.init_error: Exception | None = RuntimeError("No CUDA GPUs are available")
        self.capability = (8, 9)
        self.device_name = "NVIDIA L4"

    def is_available(self) -> bool:
        return self.available

    def init(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def get_device_capability(self, device: int = 0) -> tuple[int, int]:
        return self.capability

    def get_device_name(self, device: int = 0) -> str:
        return self.device_name


class FakeNemotronOCR:
    """``NemotronOCR`` of nemotron-ocr 2.0.2: same signature, same fallback, canned predictions."""

    instances: ClassVar[list[FakeNemotronOCR]] = []
    predictions: ClassVar[list[dict[str, Any]]] = []
    load_error: ClassVar[Exception | None] = None
    read_error: ClassVar[Exception | None] = None

    def __init__(
        self,
        model_dir: str | None = None,
        infer_length: int | None = None,
        *,
        lang: str | None = None,
        detector_only: bool = False,
        skip_relational: bool = False,
    ) -> None:
        assert model_dir is None or isinstance(model_dir, str)
        complete = model_dir is not None and all((Path(model_dir) / f).is_file() for f in CHECKPOINT_FILES)
        # The real pipeline downloads from the Hub here; a worker must never get this far.
        assert complete, f"NemotronOCR would download a checkpoint from Hugging Face: {model_dir} is incomplete"
        if self.load_error is not None:
            raise self.load_error
        self.model_dir = model_dir
        self.calls: list[tuple[np.ndarray, str]] = []
        FakeNemotronOCR.instances.append(self)

    def __call__(
        self, image: Any, merge_level: str = "paragraph", visualize: bool = False, include_invalid: bool = False
    ) -> list[dict[str, Any]]:
        assert merge_level in MERGE_LEVELS
        if self.read_error is not None:
            raise self.read_error
        self.calls.append((image, merge_level))
        return [dict(p) for p in self.predictions]


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCuda]:
    """Fake ``torch`` and ``nemotron_ocr`` modules in ``sys.modules``; yields the fake ``torch.cuda``."""
    fake_cuda = FakeCuda()
    torch = types.ModuleType("torch")
    torch.cuda = fake_cuda  # type: ignore[attr-defined]
    package = types.ModuleType("nemotron_ocr")
    inference = types.ModuleType("nemotron_ocr.inference")
    pipeline = types.ModuleType("nemotron_ocr.inference.pipeline")
    pipeline.NemotronOCR = FakeNemotronOCR  # type: ignore[attr-defined]
    pipeline.CHECKPOINT_FILES = CHECKPOINT_FILES  # type: ignore[attr-defined]
    package.inference = inference  # type: ignore[attr-defined]
    inference.pipeline = pipeline  # type: ignore[attr-defined]
    for name, module in (
        ("torch", torch),
        ("nemotron_ocr", package),
        ("nemotron_ocr.inference", inference),
        ("nemotron_ocr.inference.pipeline", pipeline),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(FakeNemotronOCR, "instances", [])
    monkeypatch.setattr(FakeNemotronOCR, "predictions", [])
    monkeypatch.setattr(FakeNemotronOCR, "load_error", None)
    monkeypatch.setattr(FakeNemotronOCR, "read_error", None)
    yield fake_cuda


@pytest.fixture
def no_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has no address-space limit, whatever the machine running the tests sets."""
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> int:
    """This process's address space is capped as the page process caps it (PAGEWIRE_PAGE_MEMORY_MB=3072)."""
    limit = 3072 * 1024 * 1024

    def getrlimit(which: int) -> tuple[int, int]:
        return (limit, limit) if which == resource.RLIMIT_AS else (resource.RLIM_INFINITY, resource.RLIM_INFINITY)

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    return 3072


def weights(directory: Path, *, without: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in NEMOTRON_FILES:
        if name != without:
            (directory / name).write_bytes(b"{}" if name.endswith((".json", ".txt")) else b"\0")
    return directory


def unavailable(model_dir: Path | None) -> str:
    with pytest.raises(PermanentError) as info:
        NemotronEngine(model_dir)
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE
    return info.value.message


# --- loading ------------------------------------------------------------------------


def test_the_checked_files_are_the_ones_nemotron_ocr_needs() -> None:
    assert sorted(NEMOTRON_FILES) == sorted(CHECKPOINT_FILES)
    assert "model_config.json" in NEMOTRON_FILES


def test_loads_the_pipeline_from_the_model_directory(cuda: FakeCuda, no_cap: None, tmp_path: Path) -> None:
    model_dir = weights(tmp_path / "v2_multilingual")

    engine = NemotronEngine(model_dir)

    (pipeline,) = FakeNemotronOCR.instances
    assert pipeline.model_dir == str(model_dir)
    assert engine.name == Engine.NEMOTRON


def test_make_engine_wraps_it_to_read_turned_pages(cuda: FakeCuda, no_cap: None, tmp_path: Path) -> None:
    engine = make_engine(Engine.NEMOTRON, model_dir=weights(tmp_path))
    assert isinstance(engine, UprightEngine)
    assert isinstance(engine.inner, NemotronEngine)
    assert engine.name == Engine.NEMOTRON


@pytest.mark.parametrize("name", NEMOTRON_FILES)
def test_a_missing_file_is_named_and_nothing_is_downloaded(
    cuda: FakeCuda, no_cap: None, tmp_path: Path, name: str
) -> None:
    message = unavailable(weights(tmp_path, without=name))
    assert name in message
    assert str(tmp_path) in message
    assert FakeNemotronOCR.instances == []


def test_an_empty_model_directory_names_every_file(cuda: FakeCuda, no_cap: None, tmp_path: Path) -> None:
    message = unavailable(tmp_path)
    assert all(name in message for name in NEMOTRON_FILES)
    assert FakeNemotronOCR.instances == []


def test_no_model_directory_says_which_variable_to_set(cuda: FakeCuda, no_cap: None) -> None:
    assert "NEMOTRON_OCR_MODEL_DIR" in unavailable(None)


def test_without_the_package_it_points_at_the_gpu_extra(
    monkeypatch: pytest.MonkeyPatch, cuda: FakeCuda, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "nemotron_ocr.inference.pipeline", None)  # an import of it now fails
    message = unavailable(weights(tmp_path))
    assert "gpu extra" in message


# --- CUDA ---------------------------------------------------------------------------


def test_no_cuda_device_without_a_cap_points_at_the_gpu_and_driver(
    cuda: FakeCuda, no_cap: None, tmp_path: Path
) -> None:
    cuda.available = False

    message = unavailable(weights(tmp_path))

    assert "No CUDA GPUs are available" in message  # torch's own reason, from torch.cuda.init()
    assert "R580" in message and "GPU" in message
    assert "PAGEWIRE_PAGE_MEMORY_MB" not in message
    assert FakeNemotronOCR.instances == []


def test_no_cuda_under_an_address_space_cap_names_the_cap(cuda: FakeCuda, capped: int, tmp_path: Path) -> None:
    # What the page process sees with PAGEWIRE_PAGE_MEMORY_MB=3072: CUDA cannot reserve its address space.
    cuda.available = False
    cuda.init_error = RuntimeError("CUDA driver initialization failed: out of memory")

    message = unavailable(weights(tmp_path))

    assert "out of memory" in message
    assert f"capped at {capped} MB" in message
    assert "PAGEWIRE_PAGE_MEMORY_MB=0" in message
    assert "R580" not in message, "the driver is not the likely cause here"


def test_a_cuda_failure_while_loading_under_a_cap_names_the_cap(cuda: FakeCuda, capped: int, tmp_path: Path) -> None:
    # A device count from NVML can succeed where the CUDA context then fails.
    FakeNemotronOCR.load_error = RuntimeError("CUDA error: out of memory")
    message = unavailable(weights(tmp_path))
    assert "failed to load: CUDA error: out of memory" in message
    assert "PAGEWIRE_PAGE_MEMORY_MB=0" in message


def test_a_load_failure_without_a_cap_is_reported_as_is(cuda: FakeCuda, no_cap: None, tmp_path: Path) -> None:
    FakeNemotronOCR.load_error = RuntimeError("Error(s) in loading state_dict for FOTSDetector")
    message = unavailable(weights(tmp_path))
    assert message == "nemotron-ocr failed to load: Error(s) in loading state_dict for FOTSDetector"


def test_a_gpu_older_than_compute_capability_8_is_refused(cuda: FakeCuda, no_cap: None, tmp_path: Path) -> None:
    cuda.capability = (7, 5)
    cuda.device_name = "Tesla T4"
    message = unavailable(weights(tmp_path))
    assert "8.0" in message and "Tesla T4 is 7.5" in message
    assert FakeNemotronOCR.instances == []


# --- reading ------------------------------------------------------------------------


def prediction(text: str, left: float, lower: float, right: float, upper: float, confidence: float) -> dict[str, Any]:
    """One entry as the pipeline builds it: ``upper`` is the larger y (lower on the page), ``lower`` the smaller."""
    assert upper >= lower
    return {"text": text, "confidence": confidence, "left": left, "upper": upper, "right": right, "lower": lower}


@pytest.fixture
def engine(cuda: FakeCuda, no_cap: None, tmp_path: Path) -> NemotronEngine:
    return NemotronEngine(weights(tmp_path))


def test_predictions_become_blocks_in_reading_order(engine: NemotronEngine) -> None:
    # Given the second line before the first, and entries without text
    FakeNemotronOCR.predictions = [
        prediction("second line", 0.10, 0.16, 0.60, 0.21, 0.80),
        prediction("  ", 0.10, 0.30, 0.20, 0.35, 0.99),
        prediction("first", 0.10, 0.10, 0.30, 0.15, 0.90),
        prediction("line", 0.32, 0.10, 0.50, 0.15, 0.70),
        prediction("", 0.70, 0.70, 0.80, 0.75, 0.99),
    ]

    page = engine.read(np.full((200, 100, 3), 255, dtype=np.uint8))

    # Then the blank ones are gone, and each box is (x0, y0, x1, y1) with y0 the smaller y
    assert [b.text for b in page.blocks] == ["first", "line", "second line"]
    assert page.blocks[0].bbox == (0.10, 0.10, 0.30, 0.15)
    assert page.blocks[2].bbox == (0.10, 0.16, 0.60, 0.21)
    assert page.text == "first line\nsecond line"
    assert page.confidence == pytest.approx((0.90 + 0.70 + 0.80) / 3)


def test_the_pipeline_gets_a_contiguous_rgb_array_and_sentence_merging(engine: NemotronEngine) -> None:
    grey = np.full((30, 40), 200, dtype=np.uint8)

    engine.read(grey)
    engine.read(np.zeros((30, 40, 3), dtype=np.uint8)[:, ::-1])  # a view with negative strides

    for image, merge_level in FakeNemotronOCR.instances[0].calls:
        assert merge_level == "sentence"
        assert image.shape == (30, 40, 3) and image.dtype == np.uint8
        assert image.flags["C_CONTIGUOUS"]


def test_numpy_scalars_and_boxes_past_the_edge_are_kept_in_range(engine: NemotronEngine) -> None:
    entry = prediction("edge", -0.01, 0.5, 1.02, 0.6, 0.5)
    entry["confidence"] = np.float32(1.2)
    entry["left"] = np.float16(-0.01)
    FakeNemotronOCR.predictions = [entry]

    (block,) = engine.read(np.zeros((10, 10, 3), dtype=np.uint8)).blocks

    assert block.bbox == (0.0, 0.5, 1.0, 0.6)
    assert block.confidence == 1.0


def test_a_page_without_text_is_empty(engine: NemotronEngine) -> None:
    page = engine.read(np.zeros((10, 10, 3), dtype=np.uint8))
    assert (page.text, page.blocks, page.confidence) == ("", [], 0.0)


def test_a_failure_while_reading_is_retryable(engine: NemotronEngine) -> None:
    FakeNemotronOCR.read_error = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(RetryableError) as info:
        engine.read(np.zeros((10, 10, 3), dtype=np.uint8))
    assert info.value.code == ErrorCode.OCR_FAILED


def test_a_malformed_image_is_refused_before_the_gpu(engine: NemotronEngine) -> None:
    with pytest.raises(ValueError):
        engine.read(np.zeros((0, 10, 3), dtype=np.uint8))
    assert FakeNemotronOCR.instances[0].calls == []


# --- batches ------------------------------------------------------------------------


class FakeNemotronOCRV2(FakeNemotronOCR):
    """``NemotronOCRV2`` of nemotron-ocr 2.0.2: a list of images in, a list of prediction lists out."""

    def __call__(  # type: ignore[override]
        self, images: Any, merge_level: str = "paragraph", include_invalid: bool = False
    ) -> Any:
        assert isinstance(images, list), "the batched pipeline is given the batch as a list"
        self.calls.append((images, merge_level))
        return [[dict(p) for p in self.predictions] for _ in images]


def test_a_batch_is_one_call_of_the_batched_pipeline_where_the_package_has_it(
    cuda: FakeCuda, no_cap: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the package's batched pipeline next to the single-image one
    v2 = types.ModuleType("nemotron_ocr.inference.pipeline_v2")
    v2.NemotronOCRV2 = FakeNemotronOCRV2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nemotron_ocr.inference.pipeline_v2", v2)
    FakeNemotronOCR.predictions = [
        {"text": "Hello", "confidence": 0.9, "left": 0.1, "right": 0.3, "upper": 0.2, "lower": 0.1}
    ]
    engine = NemotronEngine(weights(tmp_path / "weights"))

    # When three pages are read as a batch
    texts = engine.read_batch([np.zeros((50, 40, 3), dtype=np.uint8)] * 2 + [np.zeros((50, 40), dtype=np.uint8)])

    # Then the device saw one call with all three, as RGB, and each page has its text
    (instance,) = FakeNemotronOCR.instances
    assert isinstance(instance, FakeNemotronOCRV2)
    ((images, merge_level),) = instance.calls
    assert len(images) == 3 and all(image.shape == (50, 40, 3) for image in images)
    assert merge_level == "sentence"
    assert [t.text for t in texts] == ["Hello"] * 3
    assert texts[0].blocks[0].bbox == pytest.approx((0.1, 0.1, 0.3, 0.2))


def test_without_the_batched_pipeline_a_batch_is_read_page_by_page(
    cuda: FakeCuda, no_cap: None, tmp_path: Path
) -> None:
    FakeNemotronOCR.predictions = [
        {"text": "one", "confidence": 0.9, "left": 0.1, "right": 0.3, "upper": 0.2, "lower": 0.1}
    ]
    engine = NemotronEngine(weights(tmp_path / "weights"))
    texts = engine.read_batch([np.zeros((50, 40, 3), dtype=np.uint8)] * 2)
    (instance,) = FakeNemotronOCR.instances
    assert type(instance) is FakeNemotronOCR and len(instance.calls) == 2
    assert [t.text for t in texts] == ["one", "one"]
