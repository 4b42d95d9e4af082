/* The leak scan's side of the interpreter: pymalloc's pool and code-object layout, the scan's
 * entry (which captures the callers' registers), and CPython's free lists (emptied before a
 * test, and their stale slots reported as no roots).
 *
 * Compiled against the headers of the interpreter heapgate is built for, as pyframes.c is. */
#define _GNU_SOURCE 1
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stdbool.h> /* 3.13's internal headers use bool without including it */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* Append the range [start, end) to `out` at word `n` if it fits in `cap` words; returns the
 * words all ranges need so far (the caller asks again with room for them when more than
 * `cap`). */
static size_t hg_put_range(uintptr_t *out, size_t n, size_t cap, uintptr_t start, uintptr_t end) {
    if (n + 2 <= cap) {
        out[n] = start;
        out[n + 1] = end;
    }
    return n + 2;
}

/* Where the memory the allocator gave a request of `size` bytes at `block` ends (the rest of
 * it is what its previous occupant left): pymalloc serves up to 512 bytes in 16-byte
 * multiples; above, glibc's malloc gives the request and its chunk's size field rounded up to
 * 16 bytes, less that field. */
static uintptr_t hg_alloc_end(uintptr_t block, size_t size) {
    if (size <= 512) return block + ((size + 15) & ~(size_t)15);
    return block + ((size + 8 + 15) & ~(size_t)15) - 8;
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

#include "internal/pycore_runtime.h"

/* Where the interpreter keeps its runtime state (in 3.11+ the main interpreter's too: its
 * caches, free lists and static objects), which the leak scan reads first. */
void hg_py_runtime_state(uintptr_t *start, uintptr_t *end) {
    *start = (uintptr_t)&_PyRuntime;
    *end = *start + sizeof(_PyRuntimeState);
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

#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_dict.h" /* PyDictKeysObject's layout, for hg_py_object_layout */
#endif

/* Where a Python object ends in its pymalloc block, for the leak scan: the words after it up to
 * the block's end are slack, left by the block's previous occupant. Writes, in order: the
 * addresses of PyType_Type, PyType_GenericAlloc and PyUnicode_Type; the offsets in a type
 * object of tp_basicsize, tp_itemsize, tp_flags, tp_alloc and tp_dictoffset; the type flags of
 * a GC object, of a pre-header (3.11+: dict and weakref pointers before the GC head), and of
 * 3.13's inline values (after the basic size), and the offset of those values after their
 * capacity (0 before 3.13); then a str's layout: the offset of its length and its state, the
 * state's kind, compact and ascii bits, and the header sizes of a compact ASCII and a compact
 * non-ASCII str; the address of PyBytes_Type and the offset of a bytes object's characters;
 * then a dict keys object's (3.11+, zeros before): the offset of its indices, the sizes of a
 * general and a str-keyed entry, and the offsets of its log2 size, log2 index bytes and kind.
 * Returns the number of words written. */
size_t hg_py_object_layout(uintptr_t *out, size_t cap) {
    PyASCIIObject probe;
    uint32_t kind = 0, compact = 0, ascii = 0;
    memset(&probe, 0, sizeof probe);
    probe.state.kind = 7;
    memcpy(&kind, &probe.state, sizeof kind);
    memset(&probe, 0, sizeof probe);
    probe.state.compact = 1;
    memcpy(&compact, &probe.state, sizeof compact);
    memset(&probe, 0, sizeof probe);
    probe.state.ascii = 1;
    memcpy(&ascii, &probe.state, sizeof ascii);
#if PY_VERSION_HEX >= 0x030C0000
    uintptr_t preheader = Py_TPFLAGS_PREHEADER;
#elif PY_VERSION_HEX >= 0x030B0000
    uintptr_t preheader = Py_TPFLAGS_MANAGED_DICT;
#else
    uintptr_t preheader = 0;
#endif
#ifdef Py_TPFLAGS_INLINE_VALUES
    uintptr_t inline_values = Py_TPFLAGS_INLINE_VALUES;
    uintptr_t values_header = offsetof(PyDictValues, values);
#else
    uintptr_t inline_values = 0;
    uintptr_t values_header = 0;
#endif
    uintptr_t layout[] = {
        (uintptr_t)&PyType_Type,
        (uintptr_t)&PyType_GenericAlloc,
        (uintptr_t)&PyUnicode_Type,
        offsetof(PyTypeObject, tp_basicsize),
        offsetof(PyTypeObject, tp_itemsize),
        offsetof(PyTypeObject, tp_flags),
        offsetof(PyTypeObject, tp_alloc),
        offsetof(PyTypeObject, tp_dictoffset),
        Py_TPFLAGS_HAVE_GC,
        preheader,
        inline_values,
        values_header,
        offsetof(PyASCIIObject, length),
        offsetof(PyASCIIObject, state),
        kind,
        compact,
        ascii,
        sizeof(PyASCIIObject),
        sizeof(PyCompactUnicodeObject),
        (uintptr_t)&PyBytes_Type,
        offsetof(PyBytesObject, ob_sval),
#if PY_VERSION_HEX >= 0x030B0000
        offsetof(PyDictKeysObject, dk_indices),
        sizeof(PyDictKeyEntry),
        sizeof(PyDictUnicodeEntry),
        offsetof(PyDictKeysObject, dk_log2_size),
        offsetof(PyDictKeysObject, dk_log2_index_bytes),
        offsetof(PyDictKeysObject, dk_kind),
#else
        0, 0, 0, 0, 0, 0,
#endif
    };
    size_t n = sizeof layout / sizeof layout[0];
    if (n > cap) return 0;
    memcpy(out, layout, sizeof layout);
    return n;
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

#if PY_VERSION_HEX >= 0x030B0000 && !(PY_VERSION_HEX >= 0x030D0000 && defined(Py_GIL_DISABLED))
/* Each thread's Python data stack above its top: slots of frames that have returned.
 * Appends (start, end) pairs to `out` from word `n` (see hg_put_range); returns the new
 * count. */
static size_t hg_data_stacks_stale_slots(PyInterpreterState *interp, uintptr_t *out, size_t n,
                                         size_t cap) {
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t != NULL;
         t = PyThreadState_Next(t)) {
        if (t->datastack_top != NULL && t->datastack_limit != NULL) {
            n = hg_put_range(out, n, cap, (uintptr_t)t->datastack_top,
                             (uintptr_t)t->datastack_limit);
        }
    }
    return n;
}
#endif

#if PY_VERSION_HEX >= 0x030B0000 && !(PY_VERSION_HEX >= 0x030D0000 && defined(Py_GIL_DISABLED))
#include "internal/pycore_gc.h"

/* The blocks of the `count` objects of a free-list array of GC objects of `object_size`
 * bytes: an object there holds nothing (its fields are what its last user left: a list's
 * freed item array, a stale GC link), only the array holds it. Each block runs from its GC
 * head to the end of its memory (see hg_alloc_end). Appends (start, end) pairs to `out` from
 * word `n` (see hg_put_range); returns the new count. */
static size_t hg_free_list_bodies(PyObject *const *items, int count, size_t object_size,
                                  uintptr_t *out, size_t n, size_t cap) {
    for (int i = 0; i < count; i++) {
        if (items[i] == NULL) continue;
        uintptr_t start = (uintptr_t)items[i] - sizeof(PyGC_Head);
        n = hg_put_range(out, n, cap, start, hg_alloc_end(start, sizeof(PyGC_Head) + object_size));
    }
    return n;
}
#endif

/* Empty CPython's free lists of lists, dicts (and their keys), tuples and floats, as a full
 * collection does, for the leak scan: an object handed out from a free list was allocated
 * before the test, so a leaked one would be no candidate and would root whatever it points to.
 * Emptied right before the test's call, every such object the call creates is a new block.
 * 3.11 and 3.12 are emptied directly (their free lists share one layout, compiled here from
 * the version's own headers; the clearing functions are not exported); other versions run a
 * collection of the oldest generation with every object set aside, which clears them.
 * Returns 1 when emptied directly, 0 when a collection did it. The GIL must be held. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
#include "internal/pycore_interp.h"
#include "internal/pycore_list.h"
#include "internal/pycore_tuple.h"
#include "internal/pycore_floatobject.h"
#include "internal/pycore_dict.h"

/* The dict and dict-keys free lists alone. */
static void hg_clear_dict_free_lists(void) {
#if PyDict_MAXFREELIST > 0
    PyInterpreterState *interp = PyInterpreterState_Get();
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
}

/* The list free list alone. */
static void hg_clear_list_free_list(void) {
#if PyList_MAXFREELIST > 0
    PyInterpreterState *interp = PyInterpreterState_Get();
    while (interp->list.numfree > 0) {
        int i = --interp->list.numfree;
        PyObject_GC_Del(interp->list.free_list[i]);
        interp->list.free_list[i] = NULL;
    }
#endif
}

int hg_py_clear_free_lists(void) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    hg_clear_list_free_list();
    hg_clear_dict_free_lists();
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
 * (from the count up; CPython leaves the address of every object it took back out there),
 * the bodies of the lists and dicts in them (see hg_free_list_bodies), and the data stacks'
 * slots above their tops (see hg_data_stacks_stale_slots). Writes
 * (start, end) pairs into `out` (at most `cap` words), returns the words all pairs need (see
 * hg_put_range; the caller keeps the first `cap`). */
size_t hg_py_free_list_stale_slots(uintptr_t *out, size_t cap) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    size_t n = 0;
#define HG_STALE(array, count, max)                                       \
    n = hg_put_range(out, n, cap, (uintptr_t)&(array)[(count)], (uintptr_t)&(array)[(max)]);
#if PyList_MAXFREELIST > 0
    HG_STALE(interp->list.free_list, interp->list.numfree, PyList_MAXFREELIST)
#endif
#if PyDict_MAXFREELIST > 0
    HG_STALE(interp->dict_state.free_list, interp->dict_state.numfree, PyDict_MAXFREELIST)
    HG_STALE(interp->dict_state.keys_free_list, interp->dict_state.keys_numfree,
             PyDict_MAXFREELIST)
#endif
#undef HG_STALE
#if PyList_MAXFREELIST > 0
    n = hg_free_list_bodies((PyObject *const *)interp->list.free_list, interp->list.numfree,
                            sizeof(PyListObject), out, n, cap);
#endif
#if PyDict_MAXFREELIST > 0
    n = hg_free_list_bodies((PyObject *const *)interp->dict_state.free_list,
                            interp->dict_state.numfree, sizeof(PyDictObject), out, n, cap);
#endif
    return hg_data_stacks_stale_slots(interp, out, n, cap);
}
#elif PY_VERSION_HEX >= 0x030D0000 && !defined(Py_GIL_DISABLED)
/* 3.13 keeps the same free lists in one struct per interpreter (per thread only in the
 * free-threaded build, which is left to a full collection). */
#include "internal/pycore_interp.h"
#include "internal/pycore_freelist.h"

static struct _Py_object_freelists *hg_freelists(void) {
    return &PyInterpreterState_Get()->object_state.freelists;
}

static void hg_clear_dict_free_lists(void) {
#if PyDict_MAXFREELIST > 0
    struct _Py_object_freelists *fl = hg_freelists();
    while (fl->dicts.numfree > 0) {
        int i = --fl->dicts.numfree;
        PyObject_GC_Del(fl->dicts.items[i]);
        fl->dicts.items[i] = NULL;
    }
    while (fl->dictkeys.numfree > 0) {
        int i = --fl->dictkeys.numfree;
        PyObject_Free(fl->dictkeys.items[i]);
        fl->dictkeys.items[i] = NULL;
    }
#endif
}

/* The list free list alone. */
static void hg_clear_list_free_list(void) {
#if PyList_MAXFREELIST > 0
    struct _Py_object_freelists *fl = hg_freelists();
    while (fl->lists.numfree > 0) {
        int i = --fl->lists.numfree;
        PyObject_GC_Del(fl->lists.items[i]);
        fl->lists.items[i] = NULL;
    }
#endif
}

int hg_py_clear_free_lists(void) {
    struct _Py_object_freelists *fl = hg_freelists();
    hg_clear_list_free_list();
    hg_clear_dict_free_lists();
#if PyTuple_NFREELISTS > 0
    for (int i = 0; i < PyTuple_NFREELISTS; i++) {
        PyTupleObject *t = fl->tuples.items[i];
        fl->tuples.items[i] = NULL;
        if (fl->tuples.numfree[i] > 0) fl->tuples.numfree[i] = 0;
        while (t != NULL) {
            PyTupleObject *next = (PyTupleObject *)t->ob_item[0];
            PyObject_GC_Del(t);
            t = next;
        }
    }
#endif
#if PyFloat_MAXFREELIST > 0
    PyFloatObject *f = fl->floats.items;
    fl->floats.items = NULL;
    if (fl->floats.numfree > 0) fl->floats.numfree = 0;
    while (f != NULL) {
        PyFloatObject *next = (PyFloatObject *)Py_TYPE(f);
        PyObject_Free(f);
        f = next;
    }
#endif
    return 1;
}

/* As for 3.11 and 3.12 above. */
size_t hg_py_free_list_stale_slots(uintptr_t *out, size_t cap) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    struct _Py_object_freelists *fl = hg_freelists();
    size_t n = 0;
#define HG_STALE(array, count, max)                                       \
    if ((count) >= 0)                                                     \
        n = hg_put_range(out, n, cap, (uintptr_t)&(array)[(count)], (uintptr_t)&(array)[(max)]);
#if PyList_MAXFREELIST > 0
    HG_STALE(fl->lists.items, fl->lists.numfree, PyList_MAXFREELIST)
#endif
#if PyDict_MAXFREELIST > 0
    HG_STALE(fl->dicts.items, fl->dicts.numfree, PyDict_MAXFREELIST)
    HG_STALE(fl->dictkeys.items, fl->dictkeys.numfree, PyDict_MAXFREELIST)
#endif
#undef HG_STALE
#if PyList_MAXFREELIST > 0
    n = hg_free_list_bodies((PyObject *const *)fl->lists.items, fl->lists.numfree,
                            sizeof(PyListObject), out, n, cap);
#endif
#if PyDict_MAXFREELIST > 0
    n = hg_free_list_bodies((PyObject *const *)fl->dicts.items, fl->dicts.numfree,
                            sizeof(PyDictObject), out, n, cap);
#endif
    return hg_data_stacks_stale_slots(interp, out, n, cap);
}
#else
Py_ssize_t hg_py_collect_among(const uintptr_t *heads, size_t n);

int hg_py_clear_free_lists(void) {
    /* A collection of the oldest generation clears them: of no object at all (see
     * `hg_py_collect_among`; a full one costs what the process holds, twice a test), or a
     * full one where that cannot be done. */
    if (hg_py_collect_among(NULL, 0) < 0) {
        PyErr_Clear();
        PyGC_Collect();
    }
    return 0;
}

size_t hg_py_free_list_stale_slots(uintptr_t *out, size_t cap) {
    (void)out;
    (void)cap;
    return 0;
}
#endif

/* 3.11+: empty the list and dict free lists again as each call of a test function starts.
 * pytest calls it as `testfunction(**testargs)` after the last hook heapgate has, and what runs
 * in between refills the lists: 3.12's and 3.13's inlined call frees the dict it has just built
 * into the dict free list while pushing the function's frame (the test's first dict was that
 * one, no new block, and a leaked one was missed in every process), and other plugins'
 * pytest_pyfunc_call implementations run after heapgate's wrapper (with pytest-asyncio, anyio,
 * xdist, pytest-cov and rerunfailures installed, one of five leaked lists was missed in every
 * process on 3.11). A function whose vectorcall is not the interpreter's takes the ordinary
 * call instead, which keeps that dict alive until the call returns and reaches
 * `hg_emptying_vectorcall` right before the frame is pushed: nothing is freed in between. It
 * then calls the function's own vectorcall, kept while the swap lasts (3.13 does not export
 * `_PyFunction_Vectorcall`, so it cannot be named). Not the tuple and float lists: emptying
 * those there made the test's own objects new blocks that the default mode takes from the
 * lists (a METH_VARARGS call's argument tuple: a peak 48 bytes higher than without
 * --native-leaks). Nor the dict lists on 3.11, whose call keeps pytest's dict alive: emptying
 * them there missed more leaked dicts (6 of 20 processes against 1 of 20; cause not found).
 * `on`: install (1) or restore (0). Returns 1 when done, 0 when the function was left alone
 * (no plain Python function, another swap in place, or not the function swapped). */
#if PY_VERSION_HEX >= 0x030B0000 && !defined(Py_GIL_DISABLED)
#if PY_VERSION_HEX >= 0x030C0000
#define HG_SET_VECTORCALL(f, call) PyFunction_SetVectorcall((f), (call))
#else
/* 3.11 has no setter; its specialized calls check the function's version, not this field,
 * and pytest's call (CALL_FUNCTION_EX) is never specialized. */
#define HG_SET_VECTORCALL(f, call) ((f)->vectorcall = (call))
#endif
/* The swapped function's own vectorcall (one test function's call at a time; the GIL is held). */
static vectorcallfunc hg_function_vectorcall;

static PyObject *hg_emptying_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames) {
    hg_clear_list_free_list();
#if PY_VERSION_HEX >= 0x030C0000
    hg_clear_dict_free_lists();
#endif
    return hg_function_vectorcall(callable, args, nargsf, kwnames);
}

int hg_py_empty_free_lists_on_call(PyObject *function, int on) {
    if (!PyFunction_Check(function)) return 0;
    PyFunctionObject *f = (PyFunctionObject *)function;
    if (on) {
        if (hg_function_vectorcall != NULL || f->vectorcall == NULL ||
            f->vectorcall == hg_emptying_vectorcall)
            return 0;
        hg_function_vectorcall = f->vectorcall;
        HG_SET_VECTORCALL(f, hg_emptying_vectorcall);
        return 1;
    }
    if (f->vectorcall != hg_emptying_vectorcall || hg_function_vectorcall == NULL) return 0;
    HG_SET_VECTORCALL(f, hg_function_vectorcall);
    hg_function_vectorcall = NULL;
    return 1;
}
#else
/* Nothing to do before 3.11 (above). */
int hg_py_empty_free_lists_on_call(PyObject *function, int on) {
    (void)function;
    (void)on;
    return 0;
}
#endif

/* Slots of Python containers that hold no references, found on the cyclic GC's generation lists:
 * - each list's spare capacity, ob_item[size, allocated): pop(), del and slice assignment leave
 *   the addresses of the items they removed there, which would hide those items if they were
 *   leaked (every list is tracked);
 * - 3.11+: the slots (locals, then the value stack) above the saved top of a suspended
 *   generator's or coroutine's frame, all slots of one that finished (its frame is cleared
 *   without zeroing them), and those of a frame object that outlived its frame above the top
 *   it was copied with (the copy stops there; the rest is whatever the allocation held). The
 *   cyclic GC visits exactly the slots below the top (`_PyFrame_Traverse`), so the rest are
 *   dead. A running frame's saved top is stale (CPython updates it only when the frame
 *   suspends or calls a Python function inline), so running frames and the threads' data
 *   stacks are left alone; the rest of a generator's block after its last slot is dead in
 *   any state. pluggy's hook wrappers are generators: their dead slots keep addresses that
 *   the test's objects may reuse.
 * Writes (start, end) pairs into `out` while they fit in `cap` words; returns the number of
 * words all pairs need (call again with a larger buffer when that is more than `cap`). */
#include "internal/pycore_interp.h"
#include "internal/pycore_gc.h"

#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"

#if PY_VERSION_HEX >= 0x030D0000
#define HG_FRAME_CODE(frame) ((frame)->f_executable)
#else
#define HG_FRAME_CODE(frame) ((PyObject *)(frame)->f_code)
#endif

/* The number of slots (locals, then the value stack) of a frame, from its code; -1 if unknown. */
static Py_ssize_t hg_frame_slot_count(_PyInterpreterFrame *frame) {
    PyObject *code = HG_FRAME_CODE(frame);
    if (code == NULL || !PyCode_Check(code)) return -1;
    return (Py_ssize_t)((PyCodeObject *)code)->co_nlocalsplus +
           ((PyCodeObject *)code)->co_stacksize;
}

/* [start, end) of a frame's slots above its saved top (all of them when `cleared`); 0 when
 * the top is out of range. Only for frames that do not run (see above). */
static int hg_frame_dead_slots(_PyInterpreterFrame *frame, int cleared, uintptr_t *start,
                               uintptr_t *end) {
    Py_ssize_t slots = hg_frame_slot_count(frame);
    Py_ssize_t top = cleared ? 0 : frame->stacktop;
    if (slots <= 0 || top < 0 || top >= slots) return 0;
    *start = (uintptr_t)(frame->localsplus + top);
    *end = (uintptr_t)(frame->localsplus + slots);
    return 1;
}

/* Is `frame` held inside `op` as CPython lays out generators, coroutines and frame objects:
 * sized for the frame's code, with the slots starting at the type's basic size (their header
 * is not variable-sized, so the count comes from the code)? */
static int hg_frame_in_object(PyObject *op, _PyInterpreterFrame *frame) {
    PyTypeObject *type = Py_TYPE(op);
    return (char *)frame->localsplus == (char *)op + type->tp_basicsize &&
           type->tp_itemsize == sizeof(PyObject *);
}

/* As hg_frame_dead_slots, for a frame held inside an object (see hg_frame_in_object). */
static int hg_frame_slots_above(PyObject *op, _PyInterpreterFrame *frame, int cleared,
                                uintptr_t *start, uintptr_t *end) {
    if (!hg_frame_in_object(op, frame)) return 0;
    return hg_frame_dead_slots(frame, cleared, start, end);
}

/* A frame object's room for its frame while the frame runs elsewhere (a thread's data stack,
 * a generator): unwritten until the frame returns and is copied in, to the end of its block's
 * memory. 0 when the object holds its frame. */
static int hg_frame_object_unused(PyFrameObject *f, uintptr_t *start, uintptr_t *end) {
    if (f->f_frame == NULL || f->f_frame == (_PyInterpreterFrame *)f->_f_frame_data) return 0;
    /* Made with a slot for each of its code's (a frame object has no item count). */
    Py_ssize_t slots = hg_frame_slot_count(f->f_frame);
    if (slots < 0) slots = 0;
    PyTypeObject *type = Py_TYPE(f);
    size_t size = (size_t)type->tp_basicsize + (size_t)slots * (size_t)type->tp_itemsize;
    *start = (uintptr_t)f->_f_frame_data;
    *end = hg_alloc_end((uintptr_t)f - sizeof(PyGC_Head), sizeof(PyGC_Head) + size);
    return *start < *end;
}

static int hg_frame_stale_slots(PyObject *op, uintptr_t *start, uintptr_t *end) {
    if (PyGen_CheckExact(op) || PyCoro_CheckExact(op) || PyAsyncGen_CheckExact(op)) {
        PyGenObject *gen = (PyGenObject *)op;
        int8_t state = gen->gi_frame_state;
#if PY_VERSION_HEX >= 0x030D0000
        int suspended = state == FRAME_CREATED || FRAME_STATE_SUSPENDED(state);
#else
        int suspended = state == FRAME_CREATED || state == FRAME_SUSPENDED;
#endif
        _PyInterpreterFrame *frame = (_PyInterpreterFrame *)gen->gi_iframe;
        Py_ssize_t slots = hg_frame_slot_count(frame);
        if (slots <= 0 || !hg_frame_in_object(op, frame)) return 0;
        /* A running frame's top is not known (above); past the last slot, the rest of the
         * block's memory (see hg_alloc_end) is not the object's in any state (seen holding a
         * stale address in a pluggy hook wrapper's generator). */
        Py_ssize_t top = slots;
        if (state == FRAME_CLEARED) {
            top = 0;
        } else if (suspended && frame->stacktop >= 0 && frame->stacktop <= slots) {
            top = frame->stacktop;
        }
        *start = (uintptr_t)(frame->localsplus + top);
        uintptr_t block = (uintptr_t)op - sizeof(PyGC_Head);
        *end = hg_alloc_end(block, (uintptr_t)(frame->localsplus + slots) - block);
        return *start < *end;
    }
    if (PyFrame_Check(op)) {
        PyFrameObject *f = (PyFrameObject *)op;
        /* Only a frame object that owns its frame (the frame has returned) has a saved top. */
        if (f->f_frame == (_PyInterpreterFrame *)f->_f_frame_data) {
            return hg_frame_slots_above(op, f->f_frame, 0, start, end);
        }
        return hg_frame_object_unused(f, start, end);
    }
    return 0;
}

/* The room of the frame object of `frame`, a frame that runs, if it has one (see
 * hg_frame_object_unused). Such objects are untracked until their frame returns, so not in
 * the collector's lists: they are found from the frames, each thread's (see
 * hg_thread_frame_objects) and each generator's. */
static size_t hg_put_frame_object_room(_PyInterpreterFrame *frame, uintptr_t *out, size_t n,
                                       size_t cap) {
    uintptr_t start, end;
    if (frame->frame_obj != NULL && hg_frame_object_unused(frame->frame_obj, &start, &end)) {
        n = hg_put_range(out, n, cap, start, end);
    }
    return n;
}

/* hg_put_frame_object_room for every frame of every thread, from the innermost out. */
static size_t hg_thread_frame_objects(uintptr_t *out, size_t n, size_t cap) {
    for (PyThreadState *t = PyInterpreterState_ThreadHead(PyInterpreterState_Get()); t != NULL;
         t = PyThreadState_Next(t)) {
#if PY_VERSION_HEX >= 0x030D0000
        _PyInterpreterFrame *frame = t->current_frame;
#else
        _PyInterpreterFrame *frame = t->cframe != NULL ? t->cframe->current_frame : NULL;
#endif
        for (; frame != NULL; frame = frame->previous) {
#if PY_VERSION_HEX >= 0x030C0000
            /* An entry frame on the C stack sets only the fields the evaluator reads. */
            if (frame->owner == FRAME_OWNED_BY_CSTACK) continue;
#endif
            n = hg_put_frame_object_room(frame, out, n, cap);
        }
    }
    return n;
}
#endif

/* The buffer of io.BufferedReader, BufferedWriter and BufferedRandom objects (not of their
 * subclasses' instances): bytes read or
 * to be written, whose unused part keeps what the memory held before (seen: a 4096-byte
 * buffer never written at its start, stale object addresses further in, hiding a leaked
 * float). The struct is private to _io, so where it keeps the buffer's address and size is
 * found once, on a writer made for the purpose (hg_py_probe_buffered); -1: not found. */
static PyTypeObject *hg_buffered_types[3];
static Py_ssize_t hg_buffer_at = -1;
static Py_ssize_t hg_buffer_size_at = -1;

/* Find hg_buffer_at and hg_buffer_size_at: a BufferedWriter of an odd buffer size over a
 * BytesIO, 16 bytes written and not flushed; the word holding the size, and the word holding
 * an address where those 16 bytes are. Called with the GIL, outside any tracked test. Returns
 * 1 when found. */
/* Copy n bytes at `at` of this process into `out` (the kernel checks the address: a word
 * that is no address fails instead of faulting). Returns 1 when all were copied. */
static int hg_read_self(const void *at, void *out, size_t n) {
    struct iovec local = {out, n};
    struct iovec remote = {(void *)at, n};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)n;
}

int hg_py_probe_buffered(void) {
    const Py_ssize_t size = 4099;
    const char *names[3] = {"BufferedReader", "BufferedWriter", "BufferedRandom"};
    int found = 0;
    PyObject *io = PyImport_ImportModule("io");
    PyObject *raw = io ? PyObject_CallMethod(io, "BytesIO", NULL) : NULL;
    PyObject *writer = raw ? PyObject_CallMethod(io, "BufferedWriter", "On", raw, size) : NULL;
    PyObject *data = writer ? PyBytes_FromStringAndSize("heapgate-probe-!", 16) : NULL;
    PyObject *written = data ? PyObject_CallMethod(writer, "write", "O", data) : NULL;
    Py_XDECREF(data);
    for (int i = 0; io != NULL && i < 3; i++) {
        PyObject *t = PyObject_GetAttrString(io, names[i]);
        hg_buffered_types[i] = (t != NULL && PyType_Check(t)) ? (PyTypeObject *)t : NULL;
        if (t == NULL) PyErr_Clear();
        /* The types live as long as the io module (never unloaded): the reference is kept. */
    }
    if (written != NULL && hg_buffered_types[0] && hg_buffered_types[1] && hg_buffered_types[2] &&
        Py_TYPE(writer) == hg_buffered_types[1]) {
        Py_ssize_t words = Py_TYPE(writer)->tp_basicsize / (Py_ssize_t)sizeof(void *);
        char **w = (char **)writer;
        Py_ssize_t size_at = -1, buffer_at = -1;
        for (Py_ssize_t i = 2; i < words; i++) {
            if ((Py_ssize_t)(uintptr_t)w[i] == size && size_at < 0) size_at = i;
        }
        for (Py_ssize_t i = 2; i < words && size_at >= 0; i++) {
            /* Compare only an address the writer's own allocation could be: a block of at
             * least `size` bytes (the allocator's size class) that starts with what was written. */
            char *p = w[i];
            char seen[16];
            if (p != NULL && (uintptr_t)p % sizeof(void *) == 0 && i != size_at &&
                hg_read_self(p, seen, sizeof seen) && memcmp(seen, "heapgate-probe-!", 16) == 0) {
                buffer_at = i;
                break;
            }
        }
        if (buffer_at >= 0 && size_at >= 0) {
            hg_buffer_at = buffer_at * (Py_ssize_t)sizeof(void *);
            hg_buffer_size_at = size_at * (Py_ssize_t)sizeof(void *);
            found = 1;
        }
    }
    if (writer != NULL) {
        PyObject *r = PyObject_CallMethod(writer, "close", NULL);
        Py_XDECREF(r);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    Py_XDECREF(written);
    Py_XDECREF(writer);
    Py_XDECREF(raw);
    Py_XDECREF(io);
    return found;
}

/* The buffer of a buffered I/O object `op`, as (start, end); 0 when `op` is none. */
static int hg_buffered_stale_slots(PyObject *op, uintptr_t *start, uintptr_t *end) {
    if (hg_buffer_at < 0) return 0;
    /* The three types themselves: the walk asks this of every GC object the process holds
     * (a subclass check each cost a sixth of the walk on numpy's suite). */
    PyTypeObject *t = Py_TYPE(op);
    if (t != hg_buffered_types[0] && t != hg_buffered_types[1] && t != hg_buffered_types[2]) {
        return 0;
    }
    uintptr_t buffer = *(uintptr_t *)((char *)op + hg_buffer_at);
    Py_ssize_t size = *(Py_ssize_t *)((char *)op + hg_buffer_size_at);
    if (buffer == 0 || size <= 0) return 0;
    *start = buffer;
    *end = buffer + (uintptr_t)size;
    return 1;
}

/* The split values of an object's attributes (3.11-3.13), for the leak scan: the values'
 * block is allocated with a byte per value giving their insertion order, written only as far
 * as there are values, and nothing in it is a pointer. 3.11 and 3.12 put that array, the
 * values' count and the array's size in a prefix before the values (written downwards); 3.13
 * puts capacity and count in the block's first word and the array after the values. The
 * values are found from a dict (`ma_values`) or from an instance whose type manages its dict,
 * before that dict exists (3.11, 3.12: in the pre-header) or after (3.13: the dict may be
 * untracked, so not in the walk). 3.13's values embedded in their object are that object's
 * (see hg_py_object_layout). The range is (start, end): 0 when `op` has none. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#include "internal/pycore_object.h"

static PyDictValues *hg_split_values(PyObject *op) {
    if (PyDict_Check(op)) return ((PyDictObject *)op)->ma_values;
    if (!PyType_HasFeature(Py_TYPE(op), Py_TPFLAGS_MANAGED_DICT)) return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    PyDictObject *dict = _PyObject_ManagedDictPointer(op)->dict;
    return dict != NULL ? dict->ma_values : NULL;
#elif PY_VERSION_HEX >= 0x030C0000
    PyDictOrValues dorv = *_PyObject_DictOrValuesPointer(op);
    if (_PyDictOrValues_IsValues(dorv)) return _PyDictOrValues_GetValues(dorv);
    return dorv.dict != NULL ? ((PyDictObject *)dorv.dict)->ma_values : NULL;
#else
    PyDictValues *values = *_PyObject_ValuesPointer(op);
    if (values != NULL) return values;
    PyObject *dict = *_PyObject_ManagedDictPointer(op);
    return dict != NULL ? ((PyDictObject *)dict)->ma_values : NULL;
#endif
}

static int hg_split_values_stale_slots(PyObject *op, uintptr_t *start, uintptr_t *end) {
    PyDictValues *values = hg_split_values(op);
    if (values == NULL) return 0;
    const size_t word = sizeof(void *);
#if PY_VERSION_HEX >= 0x030D0000
    if (values->embedded) return 0;
    size_t capacity = values->capacity;
    /* The block new_values() asked for: a word, the values, the order rounded to words. */
    size_t size = (capacity + 1) * word + (capacity + word - 1) / word * word;
    *start = (uintptr_t)&values->values[capacity];
    *end = hg_alloc_end((uintptr_t)values, size);
#else
    size_t prefix = ((uint8_t *)values)[-1];
    if (prefix == 0 || prefix % word != 0) return 0;
    *start = (uintptr_t)values - prefix;
    *end = (uintptr_t)values;
#endif
    return 1;
}
#else
static int hg_split_values_stale_slots(PyObject *op, uintptr_t *start, uintptr_t *end) {
    (void)op;
    (void)start;
    (void)end;
    return 0;
}
#endif

/* A class's docstring, for the leak scan: CPython copies it into a block of its length and
 * terminator, so the rest of the block's memory (see hg_alloc_end), from the word the
 * terminator is in (a stale address whose low bytes the text overwrote was seen there), is
 * what the memory held before. Only heap types: a static type's doc is the extension's
 * constant. The range is (start, end): 0 when `op` is none. */
static int hg_type_doc_slack(PyObject *op, uintptr_t *start, uintptr_t *end) {
    if (!PyType_Check(op) || !PyType_HasFeature((PyTypeObject *)op, Py_TPFLAGS_HEAPTYPE)) return 0;
    const char *doc = ((PyTypeObject *)op)->tp_doc;
    if (doc == NULL) return 0;
    size_t size = strlen(doc) + 1;
    *start = ((uintptr_t)doc + size - 1) & ~(uintptr_t)(sizeof(void *) - 1);
    *end = hg_alloc_end((uintptr_t)doc, size);
    return *start < *end;
}

size_t hg_py_container_stale_slots(uintptr_t *out, size_t cap) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    struct _gc_runtime_state *gc = &interp->gc;
    size_t n = 0;
#if PY_VERSION_HEX >= 0x030B0000
    n = hg_thread_frame_objects(out, n, cap);
#endif
    for (int g = 0; g <= NUM_GENERATIONS; g++) {
        PyGC_Head *head =
            g < NUM_GENERATIONS ? &gc->generations[g].head : &gc->permanent_generation.head;
        for (PyGC_Head *p = (PyGC_Head *)head->_gc_next; p != NULL && p != head;
             p = (PyGC_Head *)p->_gc_next) {
            PyObject *op = (PyObject *)(p + 1);
#if PY_VERSION_HEX >= 0x030B0000
            uintptr_t start, end;
            if (PyGen_CheckExact(op) || PyCoro_CheckExact(op) || PyAsyncGen_CheckExact(op)) {
                PyGenObject *gen = (PyGenObject *)op;
                n = hg_put_frame_object_room((_PyInterpreterFrame *)gen->gi_iframe, out, n, cap);
                /* The word of flags before the frame (four bytes and padding) holds no
                 * reference; nor, in a generator, the coroutine's origin and async
                 * generator's finalizer before it, which no generator sets (seen holding a
                 * leaked string's address). */
                n = hg_put_range(out, n, cap,
                                 PyGen_CheckExact(op) ? (uintptr_t)&gen->gi_origin_or_finalizer
                                                      : (uintptr_t)&gen->gi_hooks_inited,
                                 (uintptr_t)gen->gi_iframe);
            }
            if (hg_frame_stale_slots(op, &start, &end)) {
                n = hg_put_range(out, n, cap, start, end);
                continue;
            }
#endif
            uintptr_t from, to;
            if (hg_buffered_stale_slots(op, &from, &to) || hg_type_doc_slack(op, &from, &to)) {
                n = hg_put_range(out, n, cap, from, to);
                continue;
            }
            if (hg_split_values_stale_slots(op, &from, &to)) {
                n = hg_put_range(out, n, cap, from, to); /* and on: a list's subclass has both */
            }
            if (!PyList_Check(op)) continue;
            PyListObject *list = (PyListObject *)op;
            if (list->ob_item == NULL || list->allocated <= Py_SIZE(list)) continue;
            n = hg_put_range(out, n, cap, (uintptr_t)(list->ob_item + Py_SIZE(list)),
                             (uintptr_t)(list->ob_item + list->allocated));
        }
    }
    return n;
}


/* Collect the tracked test's garbage and nothing else, before the leak scan: a full collection
 * visits every object the process holds (170-350 ms a test on numpy's suite), where the scan
 * needs only the test's own objects collected (older ones are its roots anyway). `heads`: the
 * GC heads of the test's live GC objects (`gc_candidates`, which checked each is one). Every
 * other object is set aside, each generation's in a list of its own, the test's objects are
 * moved to the oldest generation, and gc.collect() sees them alone; then every object set
 * aside goes back to its generation, and the generations' counts and the history that decides
 * when the oldest is collected are put back: when the process collects next, and what, is as
 * without heapgate. Garbage among older objects is not collected: it stays for the process's
 * own collections, and roots the scan (a test's object held only by it reads as reachable,
 * never as lost). Not the permanent generation (gc.freeze()), which the program may be using.
 * Returns what gc.collect() returned; -1 when this cannot be done (a collection is running,
 * an unknown interpreter: the caller collects fully); -2 with a Python error set. */
#if PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#include "internal/pycore_interp.h"
#include "internal/pycore_gc.h"

static void hg_gc_list_init(PyGC_Head *list) {
    list->_gc_next = (uintptr_t)list;
    list->_gc_prev = (uintptr_t)list;
}

static void hg_gc_list_append(PyGC_Head *node, PyGC_Head *list) {
    PyGC_Head *last = (PyGC_Head *)list->_gc_prev;
    _PyGCHead_SET_PREV(node, last);
    _PyGCHead_SET_NEXT(last, node);
    _PyGCHead_SET_NEXT(node, list);
    list->_gc_prev = (uintptr_t)node;
}

/* Move all of `from` to the end of `to`, leaving `from` empty. */
static void hg_gc_list_merge(PyGC_Head *from, PyGC_Head *to) {
    if (_PyGCHead_NEXT(from) != from) {
        PyGC_Head *to_tail = _PyGCHead_PREV(to);
        PyGC_Head *from_head = _PyGCHead_NEXT(from);
        PyGC_Head *from_tail = _PyGCHead_PREV(from);
        _PyGCHead_SET_NEXT(to_tail, from_head);
        _PyGCHead_SET_PREV(from_head, to_tail);
        _PyGCHead_SET_NEXT(from_tail, to);
        _PyGCHead_SET_PREV(to, from_tail);
    }
    hg_gc_list_init(from);
}

Py_ssize_t hg_py_collect_among(const uintptr_t *heads, size_t n) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    struct _gc_runtime_state *gc = &interp->gc;
    if (gc->collecting) return -1;
    PyObject *collect = PySys_GetObject("modules"); /* borrowed */
    collect = collect != NULL ? PyDict_GetItemString(collect, "gc") : NULL;
    collect = collect != NULL ? PyObject_GetAttrString(collect, "collect") : NULL;
    if (collect == NULL) {
        PyErr_Clear();
        return -1;
    }
    /* On this stack frame until put back. An object freed meanwhile (by a finalizer) unlinks
     * itself from its neighbours, which works in these lists as in any. */
    PyGC_Head aside[NUM_GENERATIONS];
    int counts[NUM_GENERATIONS];
    for (int i = 0; i < NUM_GENERATIONS; i++) {
        counts[i] = gc->generations[i].count;
        hg_gc_list_init(&aside[i]);
        hg_gc_list_merge(&gc->generations[i].head, &aside[i]);
    }
    Py_ssize_t long_lived_total = gc->long_lived_total;
    Py_ssize_t long_lived_pending = gc->long_lived_pending;
    PyGC_Head *oldest = &gc->generations[NUM_GENERATIONS - 1].head;
    for (size_t i = 0; i < n; i++) {
        PyGC_Head *head = (PyGC_Head *)heads[i];
        /* Still tracked and linked (nothing ran since the heads were found; checked anyway). */
        if (head->_gc_next == 0) continue;
        PyGC_Head *prev = _PyGCHead_PREV(head), *next = _PyGCHead_NEXT(head);
        if (_PyGCHead_NEXT(prev) != head || _PyGCHead_PREV(next) != head) continue;
        _PyGCHead_SET_NEXT(prev, next);
        _PyGCHead_SET_PREV(next, prev);
        hg_gc_list_append(head, oldest);
    }
    PyObject *result = PyObject_CallNoArgs(collect);
    Py_DECREF(collect);
    /* The test's survivors stay in the oldest generation (as a full collection leaves them). */
    for (int i = 0; i < NUM_GENERATIONS; i++) {
        hg_gc_list_merge(&aside[i], &gc->generations[i].head);
        gc->generations[i].count = counts[i];
    }
    gc->long_lived_total = long_lived_total;
    gc->long_lived_pending = long_lived_pending;
    if (result == NULL) return -2;
    Py_ssize_t collected = PyLong_AsSsize_t(result);
    Py_DECREF(result);
    if (collected == -1 && PyErr_Occurred()) return -2;
    return collected;
}
#else
Py_ssize_t hg_py_collect_among(const uintptr_t *heads, size_t n) {
    (void)heads;
    (void)n;
    return -1;
}
#endif
