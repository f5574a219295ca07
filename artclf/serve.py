"""`artclf serve`: not built yet (issue #7)."""

from __future__ import annotations

from collections.abc import Sequence

from artclf.cli import not_built


def main(argv: Sequence[str] | None = None) -> int:
    return not_built("serve", 7)


if __name__ == "__main__":
    raise SystemExit(main())
