"""The snappy decoder against data compressed by Google's libsnappy and by cramjam
(tests/fixtures/make_snappy_fixture.py), hand-made blocks for what compressors never emit, and malformed blocks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.weights.snappy import SnappyError, decompress

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "snappy_samples.npz") as z:
        return {k: z[k] for k in z.files}


def test_reference_compressed_samples_decompress_exactly(samples: dict) -> None:
    count = len([k for k in samples if k.startswith("raw_")])
    assert count == 7
    for i in range(count):
        raw = samples[f"raw_{i}"].tobytes()
        for implementation in ("google", "cramjam"):
            compressed = samples[f"{implementation}_{i}"].tobytes()
            assert decompress(compressed) == raw, (implementation, i)
    # the fixture really compresses: copies were decoded, not only literals
    assert len(samples["google_3"]) < len(samples["raw_3"]) // 10  # "ab" * 3000: overlapping copies
    assert len(samples["raw_5"]) > 65536  # several 64 KiB fragments


def test_hand_made_elements() -> None:
    # varint length 10, literal "ab" (tag (2-1)<<2), copy-2 length 8 offset 2 (tag ((8-1)<<2)|2): overlapping
    assert decompress(bytes([10, 1 << 2]) + b"ab" + bytes([(7 << 2) | 2, 2, 0])) == b"ab" * 5
    # copy with a 4-byte offset (kind 3), which compressors do not emit under 64 KiB fragments
    assert decompress(bytes([7, 2 << 2]) + b"xyz" + bytes([(3 << 2) | 3, 3, 0, 0, 0])) == b"xyzxyzx"
    # copy-1: length 4 + 0, offset 1: a run
    assert decompress(bytes([5, 0]) + b"q" + bytes([(0 << 2) | 1, 1])) == b"qqqqq"
    # a literal of 100 bytes uses one extra length byte (tag 60 << 2)
    assert decompress(bytes([100, 60 << 2, 99]) + bytes(range(100))) == bytes(range(100))
    assert decompress(b"\x00") == b""


@pytest.mark.parametrize("block, problem", [
    (b"", "varint"),
    (bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), "varint"),
    (bytes([5, 4 << 2]) + b"ab", "runs past the end"),  # literal of 5, 2 bytes there
    (bytes([4, 0]) + b"a" + bytes([(0 << 2) | 1, 2]), "offset 2 with only 1"),  # copy from before the start
    (bytes([4, 0]) + b"a" + bytes([(0 << 2) | 1, 0]), "offset 0"),
    (bytes([3, 1 << 2]) + b"ab", "header says 3"),  # too short
    (bytes([1, 1 << 2]) + b"ab", "past its declared length"),
    (bytes([8, 0]) + b"a" + bytes([2 << 2 | 2, 1]), "truncated copy"),
])
def test_malformed_blocks_raise(block: bytes, problem: str) -> None:
    with pytest.raises(SnappyError, match=problem):
        decompress(block)
