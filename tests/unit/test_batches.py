"""The batched pipeline: pages rendered ahead in a pool of real child processes, read in batches by a device.

The device is the simulated one (``sim``): it reads nothing and takes a GPU's
time, so these tests show what the pipeline does, fast and without a GPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from consumer.batches import BatchReader, render_pool
from consumer.child import child_setup
from consumer.engines import FakeEngine, SimEngine, UprightEngine, make_engine
from consumer.sandbox import Sandbox
from schemas.errors import ErrorCode, PermanentError
from schemas.messages import Engine, JobOptions
from tools.samples import concat, lines, scanned_pdf, text_pdf

SIM = JobOptions(engine=Engine.SIM, dpi=72)


@pytest.fixture
async def device() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox("device", memory_mb=0, setup=child_setup, setup_args=(1, Engine.SIM, None, (20.0, 5.0)))
    await sandbox.start()
    yield sandbox
    sandbox.close()


@pytest.fixture
async def renderers() -> AsyncIterator[list[Sandbox]]:
    pool = render_pool(2, memory_mb=0)
    await asyncio.gather(*(r.start() for r in pool))
    yield pool
    for renderer in pool:
        renderer.close()


def test_the_simulated_device_takes_a_batch_s_time_and_describes_each_page() -> None:
    engine = SimEngine(batch_ms=30, page_ms=10)
    images = [np.zeros((20, 10 + n, 3), dtype=np.uint8) for n in range(3)]
    started = time.perf_counter()
    texts = engine.read_batch(images)
    took = time.perf_counter() - started
    assert [t.text for t in texts] == ["simulated page 10x20", "simulated page 11x20", "simulated page 12x20"]
    assert 0.06 <= took < 0.5 and engine.busy_s == pytest.approx(0.06)
    assert make_engine(Engine.SIM, sim_ms=(1, 1)).name == Engine.SIM


def test_an_upright_batch_asks_the_inner_engine_once_for_the_whole_batch() -> None:
    inner = FakeEngine(text="upright words here")
    texts = UprightEngine(inner).read_batch([np.zeros((40, 30, 3), dtype=np.uint8)] * 4)
    assert [t.text for t in texts] == ["upright words here"] * 4
    assert inner.calls == 4  # one reading each, none turned: the batch went through read_batch


async def test_pages_come_back_in_batches_in_order_with_a_bad_page_failing_alone(
    tmp_path: Path, device: Sandbox, renderers: list[Sandbox]
) -> None:
    # Given 8 scanned pages and, as page 9, one too large to render at the limit set
    pages = scanned_pdf([lines([f"page {n}"]) for n in range(1, 9)], dpi=72)
    huge = text_pdf([lines(["a poster"])], size=(6000.0, 6000.0))
    path = tmp_path / "doc.pdf"
    path.write_bytes(concat(pages, huge))
    reader = BatchReader(device, renderers, 3, render_budget_s=30, read_budget_s=30, max_megapixels=20)

    # When they are read in batches of 3
    batches = [batch async for batch in reader.read(str(path), list(range(1, 10)), SIM)]

    # Then every page comes back once, no batch is larger than 3, each batch in page order
    got = [page.page_no for batch in batches for page in batch]
    assert sorted(got) == list(range(1, 10))
    assert all(len(batch) <= 3 for batch in batches)
    assert all([p.page_no for p in batch] == sorted(p.page_no for p in batch) for batch in batches)
    by_page = {page.page_no: page for batch in batches for page in batch}
    # and the page that does not exist failed alone, the others were read by the device
    assert isinstance(by_page[9].result, PermanentError)
    assert by_page[9].result.code == ErrorCode.PAGE_TOO_LARGE
    for page_no in range(1, 9):
        result = by_page[page_no].result
        assert not isinstance(result, PermanentError), result
        assert result.text.startswith("simulated page")
        assert by_page[page_no].engine == Engine.SIM
    assert reader.busy_s > 0


def test_rapidocr_on_a_gpu_says_so_where_onnxruntime_has_no_cuda() -> None:
    # This machine's onnxruntime runs on the CPU only: the GPU engine must not quietly read on it
    with pytest.raises(PermanentError) as info:
        make_engine(Engine.RAPIDOCR_GPU)
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE
    assert "CUDA provider" in info.value.message and "gpu extra" in info.value.message


def test_the_bare_loop_cuts_pages_into_the_planner_s_tasks() -> None:
    from tools.bench_sim import task_cuts

    cuts = task_cuts([("a.pdf", 1, 5), ("b.pdf", 3, 3)], 2)
    assert cuts == [("a.pdf", [1, 2]), ("a.pdf", [3, 4]), ("a.pdf", [5]), ("b.pdf", [3])]


def test_the_stack_s_device_time_is_read_from_the_worker_s_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools import bench_sim

    class Answer:
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self) -> bytes:
            return b"# HELP x\npagewire_device_busy_seconds_total 12.5\npagewire_device_busy_seconds_created 1.7e9\n"

    monkeypatch.setattr(bench_sim.urllib.request, "urlopen", lambda url, timeout: Answer())
    assert bench_sim.device_busy_s(9102) == 12.5


def test_a_shared_image_reads_back_in_place_and_is_freed_once() -> None:
    from consumer.shared_images import free, opened, share

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    handle = share(image)
    with opened([handle]) as (back,):
        assert np.array_equal(back, image)
    free([handle])
    free([handle])  # a second free finds nothing and says nothing
    assert not Path(f"/dev/shm/{handle.name.lstrip('/')}").exists()


def shared_blocks() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


async def test_no_page_image_is_left_in_shared_memory_after_a_read(
    tmp_path: Path, device: Sandbox, renderers: list[Sandbox]
) -> None:
    before = shared_blocks()
    path = tmp_path / "doc.pdf"
    path.write_bytes(scanned_pdf([lines([f"page {n}"]) for n in range(1, 6)], dpi=72))
    reader = BatchReader(device, renderers, 2, render_budget_s=30, read_budget_s=30, max_megapixels=50)
    # One read to its end, and one left after its first batch
    assert sum([len(batch) async for batch in reader.read(str(path), [1, 2, 3, 4, 5], SIM)]) == 5
    pages = reader.read(str(path), [1, 2, 3, 4, 5], SIM)
    assert len(await anext(pages)) >= 1
    await pages.aclose()
    assert shared_blocks() <= before
