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


@pytest.mark.parametrize("flags", [(), ("--heapgate-native",)], ids=["python", "native"])
def test_stacks_sharing_deep_frames_keep_each_allocations_own_lines(
    run, pytester: pytest.Pytester, flags: tuple[str, ...]
) -> None:
    # Consecutive allocations 41 frames deep that differ only in an outer frame's line (a
    # thread's last Python stack is reused frame by frame from the outside in, by the walk
    # and, without native stacks, by the interning): each keeps its own.
    pytester.makepyfile(
        test_lines="""
        import pytest

        def leaf(depth, out, size):
            if depth:
                return leaf(depth - 1, out, size)
            out.append(bytearray(size))

        def outer(out):
            for _ in range(50):
                leaf(40, out, 100_000)
                leaf(40, out, 200_000)

        @pytest.mark.limit_memory(1)
        def test_lines():
            out = []
            outer(out)
        """
    )
    result = run(*flags)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # 50 bytearrays of each size: their objects (56 bytes) and buffers (size + 1), one site
    # with Python stacks, two with native ones (another native caller each).
    leaves = r"\s+leaf at test_lines\.py:6\n(?:\s+leaf at test_lines\.py:5\n){40}"
    for size, line in [(200_000, 11), (100_000, 10)]:
        sites = [(50 * (size + 57), 100)] if not flags else [(50 * (size + 1), 50), (50 * 56, 50)]
        for size_sum, count in sites:
            site = rf"\({size_sum} bytes\) in {count} allocations through PyObject_Malloc\n"
            assert re.search(site + leaves + rf"\s+outer at test_lines\.py:{line}\n", out), out
