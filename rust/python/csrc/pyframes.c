/* Reading the calling thread's Python stack at allocation time.
 *
 * Compiled against the headers of the interpreter heapgate is built for, so the frame
 * layouts are that version's own (3.9-3.13). Everything here reads only: no frame objects
 * are created, no line tables are built, nothing is allocated, and the GIL is not needed
 * because a thread's frame chain is only changed by that thread. */
#define _GNU_SOURCE 1
#define Py_BUILD_CORE 1
#include <Python.h>
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#else
#include <frameobject.h>
#endif

#if PY_VERSION_HEX >= 0x030D0000
#define HG_FRAME_CODE(f) _PyFrame_GetCode(f)
#elif PY_VERSION_HEX >= 0x030B0000
#define HG_FRAME_CODE(f) ((f)->f_code)
#endif

typedef struct {
    uintptr_t code;
    uint32_t line;
    /* 1 on the outermost frame run by one C-level call of _PyEval_EvalFrameDefault. */
    uint32_t group_end;
    /* What the line was computed from: the code's line table and the instruction offset. */
    uintptr_t table;
    int32_t offset;
} hg_pyframe;

static int is_entry(uintptr_t code, const uintptr_t *entry, int n_entry) {
    for (int i = 0; i < n_entry; i++) {
        if (entry[i] == code) return 1;
    }
    return 0;
}

/* Each allocation asks for the line of every frame of its stack; a loop asks the same few
 * questions a million times. A small per-thread cache keyed by (code object, its line
 * table, instruction offset) answers them without walking the line table again; the line
 * table in the key guards against a new code object at a freed one's address.
 *
 * Two ways per set, the last used first: one stack's frames can map to one set (seen on
 * bitarray's suite: two frames of every allocation's stack shared a slot of a direct-mapped
 * cache and missed each other 126,000 times each, a line-table walk per miss). */
#define HG_LINE_SETS 256
#define HG_LINE_WAYS 2
struct hg_line_entry {
    const void *code;
    const void *table;
    int offset;
    uint32_t line;
};
static __thread struct hg_line_entry hg_lines[HG_LINE_SETS][HG_LINE_WAYS];

static const void *line_table(PyCodeObject *code) {
#if PY_VERSION_HEX >= 0x030A0000
    return code->co_linetable;
#else
    return code->co_lnotab;
#endif
}

static uint32_t line_at(PyCodeObject *code, const void *table, int byte_offset) {
    if (byte_offset < 0) return (uint32_t)code->co_firstlineno;
    /* Multiplicative mixing: code objects' addresses differ mostly in their middle bits. */
    uint64_t h = ((uint64_t)(uintptr_t)code * 0x9E3779B97F4A7C15ull) ^
                 ((uint64_t)(uint32_t)byte_offset * 0xC2B2AE3D27D4EB4Full);
    struct hg_line_entry *set = hg_lines[(h >> 40) & (HG_LINE_SETS - 1)];
    for (int way = 0; way < HG_LINE_WAYS; way++) {
        struct hg_line_entry *e = &set[way];
        if (e->code == code && e->table == table && e->offset == byte_offset) {
            struct hg_line_entry hit = *e;
            for (int w = way; w > 0; w--) set[w] = set[w - 1];
            set[0] = hit;
            return hit.line;
        }
    }
    int line = PyCode_Addr2Line(code, byte_offset);
    uint32_t result = line < 0 ? (uint32_t)code->co_firstlineno : (uint32_t)line;
    for (int w = HG_LINE_WAYS - 1; w > 0; w--) set[w] = set[w - 1];
    set[0].code = code;
    set[0].table = table;
    set[0].offset = byte_offset;
    set[0].line = result;
    return result;
}

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#include "internal/pycore_gc.h"
/* 3.11 makes the frame object a trace or profile function is handed (call_trace) just before
 * it counts the callback in tstate->tracing. While a tracer is set and the running frame has
 * no frame object yet, the size of the one it would make (GC header + variable-size object,
 * as _PyFrame_New_NoTrack asks for it); else 0. */
static size_t tracer_frame_size(PyThreadState *ts, _PyInterpreterFrame *f) {
    if (f == NULL || f->frame_obj != NULL || ts->tracing > 0 ||
        (ts->c_tracefunc == NULL && ts->c_profilefunc == NULL)) {
        return 0;
    }
    Py_ssize_t slots = f->f_code->co_nlocalsplus + f->f_code->co_stacksize;
    return sizeof(PyGC_Head) + _PyObject_VAR_SIZE(&PyFrame_Type, slots);
}
#endif

#if PY_VERSION_HEX >= 0x030C0000
#include "internal/pycore_interp.h"
#include "opcode.h"
/* 3.12+ instruments a code object for sys.monitoring (which also runs settrace and setprofile
 * functions) when it first runs after the tools' events changed: its RESUME finds the code's
 * instrumentation version behind the interpreter's and calls _Py_Instrument, which allocates
 * the code's monitoring data before any callback runs. Is the thread doing that now? */
static int instrumenting(PyThreadState *ts, _PyInterpreterFrame *f) {
    if (f == NULL || f->owner == FRAME_OWNED_BY_CSTACK) return 0;
#if PY_VERSION_HEX >= 0x030D0000
    if (f->f_executable == NULL || !PyCode_Check(f->f_executable)) return 0;
    uintptr_t current = ts->interp->ceval.instrumentation_version;
    const _Py_CODEUNIT *instr = f->instr_ptr;
#else
    uint64_t current = ts->interp->monitoring_version;
    const _Py_CODEUNIT *instr = f->prev_instr;
#endif
    if (HG_FRAME_CODE(f)->_co_instrumentation_version == current || instr == NULL) return 0;
    int op = instr->op.code;
    return op == RESUME || op == INSTRUMENTED_RESUME || op == INSTRUMENTED_LINE
#ifdef RESUME_CHECK
           || op == RESUME_CHECK
#endif
        ;
}
#endif

static int walk_frames(hg_pyframe *out, int max, const uintptr_t *entry, int n_entry,
                       const void *boundary, int *reached, int *in_tracer, size_t *tracer_frame,
                       const hg_pyframe *previous, int n_previous, int *unlike);

/* Innermost first. Stops at `boundary` (excluded, *reached = 2), at a frame running one of
 * the `entry` code objects (included, *reached = 1), or at the thread's first frame. Writes at
 * most `max` frames (the innermost) but looks past them for the entry and the boundary.
 * *in_tracer is set when the thread runs a trace, profile or sys.monitoring callback: CPython
 * counts those in tstate->tracing in 3.9-3.13 (in 3.12+ sys.monitoring callbacks, and settrace
 * and setprofile functions, which it runs through sys.monitoring); or when it instruments code
 * for them (3.12+). *tracer_frame is the size of a frame object CPython may be making for such
 * a callback right now (3.11), else 0.
 *
 * `previous` holds the frames of an earlier walk of this thread, outermost first (n_previous
 * of them): a deep stack mostly differs from the last one only in its inner frames. The
 * outer frames this walk shares with it (same code, line table and instruction offset) take
 * its lines instead of looking them up; *same_outer says how many they are. */
int hg_py_walk(hg_pyframe *out, int max, const uintptr_t *entry, int n_entry,
               const void *boundary, int *reached, int *in_tracer, size_t *tracer_frame,
               const hg_pyframe *previous, int n_previous, int *same_outer) {
    int unlike = -2;
    int n = walk_frames(out, max, entry, n_entry, boundary, reached, in_tracer, tracer_frame,
                        previous, n_previous, &unlike);
    int same = 0;
    if (n == n_previous && unlike >= -1) {
        /* As deep as the previous walk: the walk compared each frame as it read it, and the
         * frames further out than the outermost one that differs already have their lines. */
        same = n - 1 - unlike;
    } else while (same < n && same < n_previous) {
        hg_pyframe *f = &out[n - 1 - same];
        const hg_pyframe *p = &previous[same];
        if (f->code != p->code || f->offset != p->offset || f->table != p->table) break;
        f->line = p->line;
        same++;
    }
    for (int i = n - 1 - same; i >= 0; i--) {
        out[i].line = line_at((PyCodeObject *)out[i].code, (const void *)out[i].table, out[i].offset);
    }
    *same_outer = same;
    return n;
}

/* hg_py_walk's walk: writes every field but the line, except that (3.11+) it compares each
 * frame with the previous walk's frame at the same depth from the outermost one, as if this
 * stack were as deep as that one: a frame that matches takes its line, and *unlike is the
 * innermost-first index of the outermost frame that does not (-1: none). hg_py_walk uses
 * that only when the depths turn out equal (a loop allocating at one depth); else it leaves
 * *unlike as it was and the lines are left to hg_py_walk. */
static int walk_frames(hg_pyframe *out, int max, const uintptr_t *entry, int n_entry,
                       const void *boundary, int *reached, int *in_tracer, size_t *tracer_frame,
                       const hg_pyframe *previous, int n_previous, int *unlike) {
    *reached = 0;
    *in_tracer = 0;
    *tracer_frame = 0;
    PyThreadState *ts = PyGILState_GetThisThreadState();
    if (ts == NULL) return 0;
    *in_tracer = ts->tracing > 0;
    int n = 0;
#if PY_VERSION_HEX >= 0x030B0000
#if PY_VERSION_HEX >= 0x030D0000
    _PyInterpreterFrame *f = ts->current_frame;
#else
    _PyInterpreterFrame *f = ts->cframe ? ts->cframe->current_frame : NULL;
#endif
#if PY_VERSION_HEX < 0x030C0000
    *tracer_frame = tracer_frame_size(ts, f);
#else
    *in_tracer = *in_tracer || instrumenting(ts, f);
#endif
    int outermost_unlike = -1;
    for (; f != NULL; f = f->previous) {
        if ((const void *)f == boundary) {
            *reached = 2;
            break;
        }
#if PY_VERSION_HEX >= 0x030C0000
        if (f->owner == FRAME_OWNED_BY_CSTACK) continue;
#endif
#if PY_VERSION_HEX >= 0x030D0000
        if (f->f_executable == NULL || !PyCode_Check(f->f_executable)) continue;
#endif
        PyCodeObject *code = HG_FRAME_CODE(f);
        if (n == max) {
            /* Deeper than the stack kept: only look for the test's entry, so an allocation
             * made far below the test is still charged to it. */
            if (is_entry((uintptr_t)code, entry, n_entry)) {
                *reached = 1;
                break;
            }
            continue;
        }
        int offset = _PyFrame_IsIncomplete(f)
                         ? -1
                         : _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT);
        const void *table = line_table(code);
        out[n].code = (uintptr_t)code;
        out[n].table = (uintptr_t)table;
        out[n].offset = offset;
#if PY_VERSION_HEX >= 0x030C0000
        out[n].group_end = f->previous == NULL || f->previous->owner == FRAME_OWNED_BY_CSTACK;
#else
        out[n].group_end = f->is_entry;
#endif
        int at = n_previous - 1 - n;
        if (at >= 0 && previous[at].code == (uintptr_t)code && previous[at].offset == offset &&
            previous[at].table == (uintptr_t)table) {
            out[n].line = previous[at].line;
        } else {
            outermost_unlike = n;
        }
        n++;
        if (is_entry((uintptr_t)code, entry, n_entry)) {
            out[n - 1].group_end = 1;
            *reached = 1;
            break;
        }
    }
    *unlike = outermost_unlike;
#else
    /* Before 3.11 hg_py_walk compares the frames in its own pass (*unlike left as given). */
    (void)previous;
    (void)n_previous;
    (void)unlike;
    for (PyFrameObject *f = ts->frame; f != NULL; f = f->f_back) {
        if ((const void *)f == boundary) {
            *reached = 2;
            break;
        }
        PyCodeObject *code = f->f_code;
        if (n == max) {
            /* As above: deeper than the stack kept, only the entry is looked for. */
            if (is_entry((uintptr_t)code, entry, n_entry)) {
                *reached = 1;
                break;
            }
            continue;
        }
#if PY_VERSION_HEX >= 0x030A0000
        int offset = f->f_lasti < 0 ? -1 : f->f_lasti * (int)sizeof(_Py_CODEUNIT);
#else
        int offset = f->f_lasti;
#endif
        out[n].code = (uintptr_t)code;
        out[n].table = (uintptr_t)line_table(code);
        out[n].offset = offset;
        out[n].group_end = 1; /* before 3.11 every Python call is its own C-level call */
        n++;
        if (is_entry((uintptr_t)code, entry, n_entry)) {
            *reached = 1;
            break;
        }
    }
#endif
    return n;
}

/* The identity a running frame object's frame has in the chain hg_py_walk follows. */
const void *hg_py_frame_handle(PyObject *frame) {
    if (frame == NULL || !PyFrame_Check(frame)) return NULL;
#if PY_VERSION_HEX >= 0x030B0000
    return ((PyFrameObject *)frame)->f_frame;
#else
    return frame;
#endif
}

/* UTF-8 of a str without creating its cached UTF-8 copy (that would allocate on the test's
 * behalf). Returns the number of bytes written (at most cap). */
static size_t str_utf8(PyObject *s, char *buf, size_t cap) {
    if (s == NULL || !PyUnicode_Check(s)) return 0;
#if PY_VERSION_HEX < 0x030C0000
    if (!PyUnicode_IS_READY(s)) return 0;
#endif
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    size_t n = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        unsigned char tmp[4];
        size_t k;
        if (c < 0x80) {
            tmp[0] = (unsigned char)c; k = 1;
        } else if (c < 0x800) {
            tmp[0] = 0xC0 | (c >> 6); tmp[1] = 0x80 | (c & 0x3F); k = 2;
        } else if (c >= 0xD800 && c <= 0xDFFF) {
            tmp[0] = '?'; k = 1; /* lone surrogate (undecodable file name byte) */
        } else if (c < 0x10000) {
            tmp[0] = 0xE0 | (c >> 12); tmp[1] = 0x80 | ((c >> 6) & 0x3F);
            tmp[2] = 0x80 | (c & 0x3F); k = 3;
        } else {
            tmp[0] = 0xF0 | (c >> 18); tmp[1] = 0x80 | ((c >> 12) & 0x3F);
            tmp[2] = 0x80 | ((c >> 6) & 0x3F); tmp[3] = 0x80 | (c & 0x3F); k = 4;
        }
        if (n + k > cap) break;
        memcpy(buf + n, tmp, k);
        n += k;
    }
    return n;
}

/* The qualified name (3.11+; plain name before) and file name of a live code object. */
void hg_py_code_names(uintptr_t code_addr, char *function, size_t *function_len,
                      char *filename, size_t *filename_len) {
    PyCodeObject *code = (PyCodeObject *)code_addr;
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *name = code->co_qualname;
#else
    PyObject *name = code->co_name;
#endif
    *function_len = str_utf8(name, function, *function_len);
    *filename_len = str_utf8(code->co_filename, filename, *filename_len);
}

/* The address range of _PyEval_EvalFrameDefault: its native frames run Python frames. */
int hg_py_eval_function(uintptr_t *start, uintptr_t *end) {
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (!dladdr1((void *)&_PyEval_EvalFrameDefault, &info, (void **)&sym, RTLD_DL_SYMENT) ||
        sym == NULL || info.dli_saddr == NULL) {
        return 0;
    }
    *start = (uintptr_t)info.dli_saddr;
    *end = *start + (sym->st_size ? sym->st_size : 1);
    return 1;
}
