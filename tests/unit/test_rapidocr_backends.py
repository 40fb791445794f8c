"""rapidocr's backends: onnxruntime, or OpenVINO where the package is installed (pure; no model is loaded)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import pytest

from consumer import engines
from schemas.errors import ErrorCode, PermanentError


def test_an_explicit_backend_is_kept_and_an_unknown_one_refused() -> None:
    assert engines._backend("onnxruntime") == "onnxruntime"
    assert engines._backend("openvino") == "openvino"
    with pytest.raises(ValueError):
        engines._backend("tensorrt")


@pytest.mark.parametrize(("installed", "want"), [(True, "openvino"), (False, "onnxruntime")])
def test_auto_takes_openvino_only_where_it_is_installed(
    monkeypatch: pytest.MonkeyPatch, installed: bool, want: str
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "openvino":
            return object() if installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert engines._backend("auto") == want


def test_openvino_asked_for_but_missing_is_engine_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def import_module(name: str, *args: Any) -> Any:
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(PermanentError) as info:
        engines._OpenVinoModel("det.onnx", 1, "bf16")
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE
    assert "openvino" in info.value.message
