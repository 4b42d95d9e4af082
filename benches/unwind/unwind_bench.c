/* Unwinders heapgate could use in its allocation hook, timed on one 20-deep call chain.
 * Build and run: benches/unwind/run.sh (libunwind is timed when libunwind-dev is present). */
#include <execinfo.h>
#ifdef HAVE_LIBUNWIND
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unwind.h>

#define DEPTH 20
#define ITERS 200000
static void *buf[64];
static int n;
static _Unwind_Reason_Code cb(struct _Unwind_Context *c, void *arg) {
    (void)arg;
    if (n >= 64) return _URC_END_OF_STACK;
    buf[n++] = (void *)_Unwind_GetIP(c);
    return _URC_NO_REASON;
}
static int fp_walk(void) {
    void **fp = __builtin_frame_address(0);
    int k = 0;
    while (fp && k < 64) { buf[k++] = fp[1]; void **next = (void **)fp[0]; if (next <= fp) break; fp = next; }
    return k;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static volatile int sink;
__attribute__((noinline)) static void bench(const char *name, int which) {
    double t0 = now();
    for (int i = 0; i < ITERS; i++) {
        switch (which) {
        case 0: n = 0; _Unwind_Backtrace(cb, NULL); sink = n; break;
        case 1: sink = backtrace(buf, 64); break;
#ifdef HAVE_LIBUNWIND
        case 2: sink = unw_backtrace(buf, 64); break;
#endif
        case 3: sink = fp_walk(); break;
        }
    }
    double dt = now() - t0;
    printf("%-22s %7.0f ns per stack (%d frames)\n", name, dt / ITERS * 1e9, sink);
}
__attribute__((noinline)) static void recurse(int d) {
    if (d > 0) { recurse(d - 1); sink++; return; }
    for (int r = 0; r < 2; r++) {
    bench("_Unwind_Backtrace", 0);
    bench("glibc backtrace()", 1);
#ifdef HAVE_LIBUNWIND
    bench("libunwind unw_backtrace", 2);
#endif
    bench("frame pointers", 3);
    }
}
int main(void) { recurse(DEPTH); return 0; }
