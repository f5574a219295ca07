"""Tests of artclf/metrics/ (classification metrics, calibration, exact evaluation across ranks)."""
