"""artclf: learn to name the painter of a painting, on a GPU cluster."""

__version__ = "0.1.0"
