"""Allocations made far below the test (deeper than the Python stack heapgate keeps per
allocation) are still the test's, counted to the byte, with and without native stacks."""

from __future__ import annotations

import re

import pytest

from conftest import peaks


@pytest.mark.parametrize("flags", [(), ("--heapgate-native",)], ids=["python", "native"])
def test_allocations_below_the_kept_depth_are_charged(run, pytester: pytest.Pytester, flags: tuple[str, ...]) -> None:
    # 200 Python frames below the test: more than the 128 frames kept per stack.
    pytester.makepyfile(
        test_deep="""
        import sys
        import pytest
        sys.setrecursionlimit(10_000)

        def down(depth, out):
            if depth:
                return down(depth - 1, out)
            out.append(bytearray(3_000_000))

        @pytest.mark.limit_memory(2_999_999)
        def test_deep():
            out = []
            down(200, out)
            del out
        """
    )
    result = run("-v", *flags)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # bytearray(n): its object (56 bytes) and a buffer of n + 1 bytes (the trailing NUL), both
    # made at line 8; the list that holds it adds its own few bytes to the peak.
    assert 3_000_057 < peaks(result)["test_deep"] < 3_000_057 + 1024, out
    assert re.search(r"\(3000057 bytes\) in 2 allocations through PyObject_Malloc\n\s+down at test_deep\.py:8", out), out
