"""Tests of artclf/train/ (the room of the stage)."""
