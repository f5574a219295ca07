"""Huge JPEGs for the pixel-cap tests without holding their pixels: a baseline JPEG of flat grey
written marker by marker. Pillow would need width × height × 3 bytes to encode 200 MP (600 MB);
this needs a few MB, the size of the file.

Both Huffman tables hold one code, ``0``, for DC category 0 (no change) and for end-of-block:
every 8×8 block is 2 bits, all zero, so the scan is zero bytes (padded with 1-bits at the end,
ITU T.81 F.1.2.3). Every block's DC stays 0, which is grey 128 after the level shift."""

from __future__ import annotations

import struct


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def flat_jpeg(width: int, height: int, components: int = 3, scan: bool = True, first_scan: int = 0) -> bytes:
    """A valid baseline (SOF0), 4:4:4 JPEG of ``width`` × ``height`` flat grey pixels.
    ``scan=False``: headers only (what a refusal before decoding reads). ``first_scan``: how many
    components the first scan holds (0 = all, one interleaved scan); fewer makes libjpeg buffer
    the whole image's coefficients, as for a progressive JPEG."""
    ids = range(1, components + 1)
    dqt = _segment(0xFFDB, b"\x00" + bytes([1] * 64))
    sof = _segment(0xFFC0, struct.pack(">BHHB", 8, height, width, components) + b"".join(
        bytes([i, 0x11, 0]) for i in ids))  # fmt: skip
    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1 for symbol 0
    dht = _segment(0xFFC4, b"\x00" + one_code + b"\x10" + one_code)
    n = first_scan or components
    sos = _segment(0xFFDA, bytes([n]) + b"".join(bytes([i, 0x00]) for i in list(ids)[:n]) + b"\x00\x3f\x00")
    head = b"\xff\xd8" + dqt + sof + dht + sos
    if not scan:
        return head
    bits = (-(-width // 8)) * (-(-height // 8)) * n * 2
    data = bytes(bits // 8) + (bytes([0xFF >> (bits % 8)]) if bits % 8 else b"")
    return head + data + b"\xff\xd9"
