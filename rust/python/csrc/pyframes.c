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
 * table in the key guards against a new code object at a freed one's address. */
#define HG_LINE_CACHE 512
struct hg_line_entry {
    const void *code;
    const void *table;
    int offset;
    uint32_t line;
};
static __thread struct hg_line_entry hg_lines[HG_LINE_CACHE];

static uint32_t line_at(PyCodeObject *code, int byte_offset) {
    if (byte_offset < 0) return (uint32_t)code->co_firstlineno;
#if PY_VERSION_HEX >= 0x030A0000
    const void *table = code->co_linetable;
#else
    const void *table = code->co_lnotab;
#endif
    size_t slot = (((uintptr_t)code >> 4) ^ ((uintptr_t)byte_offset * 0x9E3779B1u)) & (HG_LINE_CACHE - 1);
    struct hg_line_entry *e = &hg_lines[slot];
    if (e->code == code && e->table == table && e->offset == byte_offset) return e->line;
    int line = PyCode_Addr2Line(code, byte_offset);
    uint32_t result = line < 0 ? (uint32_t)code->co_firstlineno : (uint32_t)line;
    e->code = code;
    e->table = table;
    e->offset = byte_offset;
    e->line = result;
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

/* Innermost first. Stops at `boundary` (excluded, *reached = 2), at a frame running one of
 * the `entry` code objects (included, *reached = 1), or at the thread's first frame. Writes at
 * most `max` frames (the innermost) but looks past them for the entry and the boundary.
 * *in_tracer is set when the thread runs a trace, profile or sys.monitoring callback: CPython
 * counts those in tstate->tracing in 3.9-3.13 (in 3.12+ sys.monitoring callbacks, and settrace
 * and setprofile functions, which it runs through sys.monitoring); or when it instruments code
 * for them (3.12+). *tracer_frame is the size of a frame object CPython may be making for such
 * a callback right now (3.11), else 0. */
int hg_py_walk(hg_pyframe *out, int max, const uintptr_t *entry, int n_entry,
               const void *boundary, int *reached, int *in_tracer, size_t *tracer_frame) {
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
        out[n].code = (uintptr_t)code;
        out[n].line = line_at(code, offset);
#if PY_VERSION_HEX >= 0x030C0000
        out[n].group_end = f->previous == NULL || f->previous->owner == FRAME_OWNED_BY_CSTACK;
#else
        out[n].group_end = f->is_entry;
#endif
        n++;
        if (is_entry((uintptr_t)code, entry, n_entry)) {
            out[n - 1].group_end = 1;
            *reached = 1;
            break;
        }
    }
#else
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
        out[n].line = line_at(code, offset);
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

/* pymalloc's pool geometry, for the leak scan (the pool header layout is the same in
 * 3.9-3.13; sizes come from the headers where CPython publishes them). */
#if PY_VERSION_HEX >= 0x030C0000
#include "internal/pycore_obmalloc.h"
#define HG_POOL_SIZE POOL_SIZE
#define HG_ALIGNMENT_SHIFT ALIGNMENT_SHIFT
#elif PY_VERSION_HEX >= 0x030A0000
#define HG_POOL_SIZE (1 << 14) /* 3.10, 3.11: large pools with the radix tree (64-bit) */
#define HG_ALIGNMENT_SHIFT 4
#else
#define HG_POOL_SIZE (1 << 12)
#define HG_ALIGNMENT_SHIFT 4
#endif

void hg_py_pool_layout(size_t *pool_size, size_t *overhead, unsigned *alignment_shift) {
    size_t header = 4 * sizeof(void *) + 4 * sizeof(unsigned int);
    size_t align = (size_t)1 << HG_ALIGNMENT_SHIFT;
    *pool_size = HG_POOL_SIZE;
    *overhead = (header + align - 1) & ~(align - 1);
    *alignment_shift = HG_ALIGNMENT_SHIFT;
}

/* The code object type and the offset of a code object's bytecode, which 3.11+ keeps inline
 * with its specialising caches (borrowed object addresses that go stale; 0 before 3.11). */
void hg_py_code_layout(uintptr_t *code_type, size_t *bytecode) {
    *code_type = (uintptr_t)&PyCode_Type;
#if PY_VERSION_HEX >= 0x030B0000
    *bytecode = offsetof(PyCodeObject, co_code_adaptive);
#else
    *code_type = 0;
    *bytecode = 0;
#endif
}

/* 3.12 keeps a managed-dict object's inline values behind a pointer stored as their address
 * minus 1 (the values are an interior block address, so the word is odd): 1 there, else 0. */
size_t hg_py_values_tag(void) {
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030D0000
    return 1;
#else
    return 0;
#endif
}

/* The leak scan's entry, called directly by the interpreter: everything above this frame is
 * the callers' (live), everything below is ours or left by calls that have returned (stale,
 * and must not count as references). The callers' callee-saved registers are captured with
 * setjmp. Compiled without sibling-call optimisation, so `registers` outlives the call. */
#include <setjmp.h>

typedef PyObject *(*hg_scan_callback)(uintptr_t stack_from, const uintptr_t *registers,
                                      size_t n_registers);
static hg_scan_callback scan_callback = NULL;

static PyObject *scan_leaks_entry(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    jmp_buf registers;
    setjmp(registers);
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    PyObject *result = scan_callback(here, (const uintptr_t *)(void *)&registers,
                                     sizeof(jmp_buf) / (sizeof(uintptr_t)));
    __asm__ volatile("" ::: "memory");
    return result;
}

static PyMethodDef scan_leaks_def = {
    "scan_leaks", scan_leaks_entry, METH_NOARGS,
    "scan_leaks() -> dict\n--\n\nClassify the tracked test's live blocks by reachability "
    "(call after gc.collect(), before stop()). Returns totals per kind."};

PyObject *hg_py_make_scan_function(PyObject *module, hg_scan_callback callback) {
    scan_callback = callback;
    return PyCFunction_NewEx(&scan_leaks_def, module, NULL);
}

/* Empty CPython's free lists of lists, dicts (and their keys), tuples and floats, as a full
 * collection does, for the leak scan: an object handed out from a free list was allocated
 * before the test, so a leaked one would be no candidate and would root whatever it points to.
 * Emptied right before the test's call, every such object the call creates is a new block.
 * 3.11 and 3.12 are emptied directly (their free lists share one layout, compiled here from
 * the version's own headers; the clearing functions are not exported); other versions run a
 * full collection, which clears them (3.9-3.13).
 * Returns 1 when emptied directly, 0 when a collection did it. The GIL must be held. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
#include "internal/pycore_interp.h"
#include "internal/pycore_list.h"
#include "internal/pycore_tuple.h"
#include "internal/pycore_floatobject.h"
#include "internal/pycore_dict.h"

int hg_py_clear_free_lists(void) {
    PyInterpreterState *interp = PyInterpreterState_Get();
#if PyList_MAXFREELIST > 0
    while (interp->list.numfree > 0) {
        int i = --interp->list.numfree;
        PyObject_GC_Del(interp->list.free_list[i]);
        interp->list.free_list[i] = NULL;
    }
#endif
#if PyDict_MAXFREELIST > 0
    while (interp->dict_state.numfree > 0) {
        int i = --interp->dict_state.numfree;
        PyObject_GC_Del(interp->dict_state.free_list[i]);
        interp->dict_state.free_list[i] = NULL;
    }
    while (interp->dict_state.keys_numfree > 0) {
        int i = --interp->dict_state.keys_numfree;
        PyObject_Free(interp->dict_state.keys_free_list[i]);
        interp->dict_state.keys_free_list[i] = NULL;
    }
#endif
#if PyTuple_NFREELISTS > 0
    for (int i = 0; i < PyTuple_NFREELISTS; i++) {
        PyTupleObject *t = interp->tuple.free_list[i];
        interp->tuple.free_list[i] = NULL;
        interp->tuple.numfree[i] = 0;
        while (t != NULL) {
            PyTupleObject *next = (PyTupleObject *)t->ob_item[0];
            PyObject_GC_Del(t);
            t = next;
        }
    }
#endif
#if PyFloat_MAXFREELIST > 0
    PyFloatObject *f = interp->float_state.free_list;
    interp->float_state.free_list = NULL;
    interp->float_state.numfree = 0;
    while (f != NULL) {
        PyFloatObject *next = (PyFloatObject *)Py_TYPE(f);
        PyObject_Free(f);
        f = next;
    }
#endif
    return 1;
}

/* Interpreter memory that holds no references: the unused slots of the free-list arrays
 * (from the count up; CPython leaves the address of every object it took back out there)
 * and the data stacks' slots above their tops. Writes (start, end) pairs
 * into `out` (at most `cap` words), returns the number of words written. */
size_t hg_py_free_list_stale_slots(uintptr_t *out, size_t cap) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    size_t n = 0;
#define HG_STALE(array, count, max)                                       \
    if (n + 2 <= cap) {                                                   \
        out[n++] = (uintptr_t)&(array)[(count)];                          \
        out[n++] = (uintptr_t)&(array)[(max)];                            \
    }
#if PyList_MAXFREELIST > 0
    HG_STALE(interp->list.free_list, interp->list.numfree, PyList_MAXFREELIST)
#endif
#if PyDict_MAXFREELIST > 0
    HG_STALE(interp->dict_state.free_list, interp->dict_state.numfree, PyDict_MAXFREELIST)
    HG_STALE(interp->dict_state.keys_free_list, interp->dict_state.keys_numfree,
             PyDict_MAXFREELIST)
#endif
#undef HG_STALE
    /* Each thread's Python data stack above its top: slots of frames that have returned. */
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t != NULL;
         t = PyThreadState_Next(t)) {
        if (n + 2 <= cap && t->datastack_top != NULL && t->datastack_limit != NULL) {
            out[n++] = (uintptr_t)t->datastack_top;
            out[n++] = (uintptr_t)t->datastack_limit;
        }
    }
    return n;
}
#else
int hg_py_clear_free_lists(void) {
    PyGC_Collect();
    return 0;
}

size_t hg_py_free_list_stale_slots(uintptr_t *out, size_t cap) {
    (void)out;
    (void)cap;
    return 0;
}
#endif
