"""Tests of artclf/shard/ (the room of the stage)."""
