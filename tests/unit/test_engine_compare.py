"""Engines side by side in ``pagewire eval`` and ``pagewire bench``: CPU seconds that include child processes."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import numpy as np
import pytest

from consumer.engines import FakeEngine
from schemas.messages import Engine
from tools import bench
from tools.evaluate import ENGINES, CachedEngine, Sample, cpu_seconds, evaluate, summarise
from tools.samples import lines, scanned_pdf


def test_cpu_seconds_count_children_that_ended() -> None:
    before = cpu_seconds()
    # A child that burns about 0.3 s of CPU: tesseract runs as one such child a page.
    subprocess.run(
        [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
        check=True,
    )
    assert cpu_seconds() - before >= 0.25
    before = bench.process_and_children_cpu_s()
    subprocess.run(
        [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
        check=True,
    )
    assert bench.process_and_children_cpu_s() - before >= 0.25


def test_cached_engine_reads_an_image_once_and_remembers_its_cost() -> None:
    fake = FakeEngine(text="hello")
    cached = CachedEngine(lambda: fake, Engine.RAPIDOCR)
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    assert cached.cost(image) == (0.0, 0.0)
    assert cached.read(image).text == "hello"
    assert cached.read(image.copy()).text == "hello"
    assert (fake.calls, cached.reads) == (1, 1)
    wall, cpu = cached.cost(image)
    assert wall >= 0 and cpu >= 0


def test_eval_and_bench_know_the_tesseract_engine() -> None:
    assert "tesseract" in ENGINES
    parser = argparse.ArgumentParser()
    bench._add_arguments(parser)
    assert parser.parse_args(["--engine", "tesseract"]).engine == "tesseract"


TEXT = ["The harbour office opens at eight.", "Fees are due within thirty days."]


@pytest.mark.ocr
@pytest.mark.skipif(shutil.which("tesseract") is None, reason="no tesseract binary here")
def test_eval_reads_with_tesseract_and_charges_its_cpu() -> None:
    sample = Sample("generated-scan", "generated:1", scanned_pdf([lines(TEXT)]), 1, "\n".join(TEXT))
    report = evaluate([sample], ["tesseract"], max_ocr_pages=1)
    (row,) = summarise(report)
    assert (row.cls, row.engine, row.sources) == ("generated-scan", "tesseract", {"tesseract": 1})
    assert row.score.cer < 0.05
    # tesseract runs in a child process: its CPU time is counted all the same.
    assert row.score.cpu_seconds > 0.05
    assert report.ocr_reads == 1
