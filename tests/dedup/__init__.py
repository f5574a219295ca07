"""Tests of artclf/dedup/ (the room of the stage)."""
