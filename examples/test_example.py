"""heapgate's example: one test within its limit, two over it (native and Python)."""

import pytest

import bigbuffers


@pytest.mark.limit_memory("24 MB")
def test_checksum_fits():
    assert bigbuffers.checksum(16 * 1024 * 1024) == 0


@pytest.mark.limit_memory("8 MB")
def test_checksum_too_big():
    # The C extension mallocs 16 MiB of scratch: the failure names this line.
    assert bigbuffers.checksum(16 * 1024 * 1024) == 0


def build_rows(n):
    return [{"id": i, "name": f"row-{i}"} for i in range(n)]


@pytest.mark.limit_memory("1 MiB")
def test_rows_too_big():
    rows = build_rows(20_000)
    assert len(rows) == 20_000
