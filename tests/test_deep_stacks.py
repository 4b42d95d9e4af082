"""Allocations made far below the test (deeper than the Python stack heapgate keeps per
allocation) are still the test's, counted to the byte, with and without native stacks."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import peaks

# Up to 3.12 a bytearray's buffer comes from PyObject_Malloc like its object (one site per
# line); from 3.13 on, from PyMem_Malloc (a site of its own). The tests store into lists made
# ahead (no list grows at the allocating line: from 3.13 its PyMem_Malloc would share the
# buffers' site).
BUFFERS_APART = sys.version_info >= (3, 13)


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
            out[0] = bytearray(3_000_000)

        @pytest.mark.limit_memory(2_999_999)
        def test_deep():
            out = [None]
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
    sites = (
        [(3_000_001, "1 allocation", "PyMem_Malloc"), (56, "1 allocation", "PyObject_Malloc")]
        if BUFFERS_APART
        else [(3_000_057, "2 allocations", "PyObject_Malloc")]
    )
    for size_sum, count, allocator in sites:
        assert re.search(rf"\({size_sum} bytes\) in {count} through {allocator}\n\s+down at test_deep\.py:8", out), out


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
            out[out.index(None)] = bytearray(size)

        def outer(out):
            for _ in range(50):
                leaf(40, out, 100_000)
                leaf(40, out, 200_000)

        @pytest.mark.limit_memory(1)
        def test_lines():
            out = [None] * 100
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
        if BUFFERS_APART:
            sites = [(50 * (size + 1), 50, "PyMem_Malloc"), (50 * 56, 50, "PyObject_Malloc")]
        elif flags:
            sites = [(50 * (size + 1), 50, "PyObject_Malloc"), (50 * 56, 50, "PyObject_Malloc")]
        else:
            sites = [(50 * (size + 57), 100, "PyObject_Malloc")]
        for size_sum, count, allocator in sites:
            site = rf"\({size_sum} bytes\) in {count} allocations through {allocator}\n"
            assert re.search(site + leaves + rf"\s+outer at test_lines\.py:{line}\n", out), out


def test_stacks_as_deep_as_the_last_through_other_callers_keep_their_callers(run, pytester: pytest.Pytester) -> None:
    # Consecutive allocations 32 frames deep whose stacks differ only in one frame's code
    # object, at the same instruction offset (two callers with the same code, called from one
    # call site, and a generator resumed by two such callers):
    # the walk compares each frame with the last walk's frame at the same depth as it reads
    # it, and a frame there that matches lends its line. Each caller keeps its own site.
    # Python stacks only: with native ones the failure text's five locations do not reach
    # every caller's sites (a generator's allocations split by native caller).
    pytester.makepyfile(
        test_callers="""
        import pytest

        def leaf(depth, out, size):
            if depth:
                return leaf(depth - 1, out, size)
            out[out.index(None)] = bytearray(size)

        def via_a(out, size):
            leaf(30, out, size)

        def via_b(out, size):
            leaf(30, out, size)

        def gen(out, size):
            while True:
                leaf(30, out, size)
                yield

        def resume(g):
            next(g)

        def resume_too(g):
            next(g)

        @pytest.mark.limit_memory(1)
        def test_callers():
            out = [None] * 80
            g = gen(out, 300_000)
            for _ in range(20):
                # One call site each: the frames outside the callers are the same too.
                for call, size in ((via_a, 100_000), (via_b, 200_000)):
                    call(out, size)
                for resume_it in (resume, resume_too):
                    resume_it(g)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    leaves = r"\s+leaf at test_callers\.py:6\n(?:\s+leaf at test_callers\.py:5\n){30}"
    for size, callers in [
        (100_000, r"\s+via_a at test_callers\.py:9\n"),
        (200_000, r"\s+via_b at test_callers\.py:12\n"),
        (300_000, r"\s+gen at test_callers\.py:16\n\s+resume at test_callers\.py:20\n"),
        (300_000, r"\s+gen at test_callers\.py:16\n\s+resume_too at test_callers\.py:23\n"),
    ]:
        # 20 bytearrays per caller: objects (56 bytes) and buffers (size + 1), one site; from
        # 3.13 the buffers' own (the objects' sites are too small to be among the five shown).
        if BUFFERS_APART:
            site = rf"\({20 * (size + 1)} bytes\) in 20 allocations through PyMem_Malloc\n"
        else:
            site = rf"\({20 * (size + 57)} bytes\) in 40 allocations through PyObject_Malloc\n"
        assert re.search(site + leaves + callers, out), out
