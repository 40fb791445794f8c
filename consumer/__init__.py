"""The OCR side of pagewire: planner, worker, recorder, engines and adapters."""
