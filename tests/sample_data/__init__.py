"""Tests of artclf/sample_data/ (the room of the stage)."""
