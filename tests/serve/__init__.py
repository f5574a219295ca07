"""Tests of artclf/serve/ (the room of the stage)."""
