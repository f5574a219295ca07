"""Tests of artclf/metrics/: classification metrics against scikit-learn, calibration. (The exact
evaluation loop runs on real ranks in tests/train/ and tests/test_evaluate.py.)"""
