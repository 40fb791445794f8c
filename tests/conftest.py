"""Fixtures and hooks for every test: the corpus, and the ``integration`` marker by location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration, so ``-m "not integration"`` runs the fast suite."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The sample PDFs: ``PAGEWIRE_CORPUS_DIR``, else ``shared/corpus`` beside the checkout; skip without."""
    configured = os.environ.get("PAGEWIRE_CORPUS_DIR")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "corpus"
    if not path.is_dir():
        pytest.skip(f"no corpus at {path} (set PAGEWIRE_CORPUS_DIR)")
    return path
