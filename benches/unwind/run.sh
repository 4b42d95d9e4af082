#!/usr/bin/env bash
# Times libgcc's _Unwind_Backtrace (heapgate's unwinder), glibc's backtrace(), libunwind's
# unw_backtrace (if libunwind-dev is installed) and a frame-pointer walk.
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
gcc -O2 -fno-omit-frame-pointer unwind_bench.c -o "$out/libgcc"
echo "== libgcc only (as heapgate links)"
"$out/libgcc"
if echo '#include <libunwind.h>' | gcc -E - >/dev/null 2>&1; then
    gcc -O2 -fno-omit-frame-pointer -DHAVE_LIBUNWIND unwind_bench.c -o "$out/libunwind" -lunwind
    echo "== with libunwind linked (its _Unwind_* replace libgcc's)"
    "$out/libunwind"
fi
rm -rf "$out"
