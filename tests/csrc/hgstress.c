/* A C extension for the reliability tests (tests/test_reliability.py), built by
 * tests/conftest.py: threads that allocate concurrently with a known peak, a segfault, a
 * PyMem_SetAllocator wrapper of its own, and probes of what heapgate patched. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- threads: every participant churns, then holds one block at a barrier ---------------- */

static pthread_barrier_t peak_barrier;
static int peak_barrier_ready = 0;

struct churn { size_t size; size_t iterations; };

/* The deterministic work of one thread: `iterations` blocks of size/2 + i % 97 bytes (each
 * freed at once), then one block of `size` bytes held until every participant holds its own:
 * the peak of native memory is participants * size, the total is computed by churn_total. */
static void churn_body(const struct churn *c) {
    for (size_t i = 0; i < c->iterations; i++) {
        size_t n = c->size / 2 + i % 97;
        void *p = (i % 2) ? calloc(1, n) : malloc(n);
        memset(p, 0x5a, n);
        free(p);
    }
    void *held = malloc(c->size);
    memset(held, 0xa5, c->size);
    pthread_barrier_wait(&peak_barrier); /* all blocks live: the peak */
    pthread_barrier_wait(&peak_barrier);
    free(held);
}

static PyObject *stress_begin(PyObject *self, PyObject *arg) {
    Py_ssize_t participants = PyLong_AsSsize_t(arg);
    if (participants < 1) return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "participants >= 1");
    if (peak_barrier_ready) pthread_barrier_destroy(&peak_barrier);
    pthread_barrier_init(&peak_barrier, NULL, (unsigned)participants);
    peak_barrier_ready = 1;
    Py_RETURN_NONE;
}

/* worker(size, iterations): the churn on the calling (Python) thread, GIL released.
 * METH_FASTCALL, so calling it allocates no argument tuple. */
static PyObject *worker(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "worker(size, iterations)");
    struct churn c = {(size_t)PyLong_AsSsize_t(args[0]), (size_t)PyLong_AsSsize_t(args[1])};
    if (PyErr_Occurred()) return NULL;
    Py_BEGIN_ALLOW_THREADS
    churn_body(&c);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static void *native_main(void *arg) {
    churn_body(arg);
    return NULL;
}

/* native_workers(n, size, iterations): n pthreads doing the churn; returns when all ended. */
static PyObject *native_workers(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "native_workers(n, size, iterations)");
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    struct churn c = {(size_t)PyLong_AsSsize_t(args[1]), (size_t)PyLong_AsSsize_t(args[2])};
    if (PyErr_Occurred()) return NULL;
    if (n < 1 || n > 64) return PyErr_Format(PyExc_ValueError, "1..64 threads");
    pthread_t tids[64];
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) pthread_create(&tids[i], NULL, native_main, &c);
    for (Py_ssize_t i = 0; i < n; i++) pthread_join(tids[i], NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- crash ----------------------------------------------------------------------------------- */

static PyObject *segfault(PyObject *self, PyObject *noargs) {
    volatile int *nowhere = NULL;
    *nowhere = 42;
    Py_RETURN_NONE;
}

/* ---- Python's allocators ------------------------------------------------------------------- */

/* A wrapper of the MEM domain as an extension (or a profiler) would install one: it counts
 * calls and forwards them to the allocator it found. */
static PyMemAllocatorEx wrapped;
static int wrapping = 0;
static unsigned long wrapper_calls = 0;

static void *w_malloc(void *ctx, size_t n) { wrapper_calls++; return wrapped.malloc(wrapped.ctx, n); }
static void *w_calloc(void *ctx, size_t c, size_t n) { wrapper_calls++; return wrapped.calloc(wrapped.ctx, c, n); }
static void *w_realloc(void *ctx, void *p, size_t n) { wrapper_calls++; return wrapped.realloc(wrapped.ctx, p, n); }
static void w_free(void *ctx, void *p) { wrapped.free(wrapped.ctx, p); }

static PyObject *wrap_pymem(PyObject *self, PyObject *noargs) {
    if (wrapping) return PyErr_Format(PyExc_RuntimeError, "already wrapped");
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &wrapped);
    PyMemAllocatorEx ours = {NULL, w_malloc, w_calloc, w_realloc, w_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &ours);
    wrapping = 1;
    wrapper_calls = 0;
    Py_RETURN_NONE;
}

static PyObject *unwrap_pymem(PyObject *self, PyObject *noargs) {
    if (!wrapping) return PyErr_Format(PyExc_RuntimeError, "not wrapped");
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &wrapped);
    wrapping = 0;
    return PyLong_FromUnsignedLong(wrapper_calls);
}

/* An allocator saved now and set back later: set back after heapgate wrapped the domain, it
 * takes heapgate's wrapper out (as tracemalloc.stop() does under `python -X tracemalloc`). */
static PyMemAllocatorEx saved;
static int have_saved = 0;

static PyObject *save_pymem(PyObject *self, PyObject *noargs) {
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &saved);
    have_saved = 1;
    Py_RETURN_NONE;
}

static PyObject *restore_saved_pymem(PyObject *self, PyObject *noargs) {
    if (!have_saved) return PyErr_Format(PyExc_RuntimeError, "nothing saved");
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &saved);
    Py_RETURN_NONE;
}

/* PyMem_Malloc(n) (the MEM domain), touched, then freed: n bytes at the peak. */
static PyObject *pymem_malloc_free(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "n >= 0");
    void *p = PyMem_Malloc(n);
    if (p == NULL) return PyErr_NoMemory();
    memset(p, 0x33, n);
    PyMem_Free(p);
    Py_RETURN_NONE;
}

/* ---- what heapgate patched ------------------------------------------------------------------ */

static PyObject *object_of(void *address) {
    Dl_info info;
    if (address == NULL || dladdr(address, &info) == 0 || info.dli_fname == NULL) Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(info.dli_fname);
}

/* The object that defines the function this extension's GOT entry for malloc points at: the C
 * library untracked, heapgate's extension once its hooks are in. */
static PyObject *got_malloc_owner(PyObject *self, PyObject *noargs) {
    void *(*volatile entry)(size_t) = malloc; /* read from our GOT (-fPIC) */
    return object_of((void *)entry);
}

/* The object that defines the MEM domain's current malloc function. */
static PyObject *pymem_malloc_owner(PyObject *self, PyObject *noargs) {
    PyMemAllocatorEx current;
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &current);
    return object_of((void *)current.malloc);
}

static PyMethodDef methods[] = {
    {"stress_begin", stress_begin, METH_O, "set up the peak barrier for n participants"},
    {"worker", (PyCFunction)(void (*)(void))worker, METH_FASTCALL, "churn on this thread"},
    {"native_workers", (PyCFunction)(void (*)(void))native_workers, METH_FASTCALL, "churn on n pthreads"},
    {"segfault", segfault, METH_NOARGS, "write to address 0"},
    {"wrap_pymem", wrap_pymem, METH_NOARGS, "wrap the MEM domain's allocator"},
    {"unwrap_pymem", unwrap_pymem, METH_NOARGS, "restore it; returns the wrapper's call count"},
    {"save_pymem", save_pymem, METH_NOARGS, "save the MEM domain's allocator"},
    {"restore_saved_pymem", restore_saved_pymem, METH_NOARGS, "set the saved allocator back"},
    {"pymem_malloc_free", pymem_malloc_free, METH_O, "PyMem_Malloc(n), PyMem_Free"},
    {"got_malloc_owner", got_malloc_owner, METH_NOARGS, "object our GOT's malloc is in"},
    {"pymem_malloc_owner", pymem_malloc_owner, METH_NOARGS, "object the MEM domain's malloc is in"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hgstress", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hgstress(void) { return PyModule_Create(&module); }
