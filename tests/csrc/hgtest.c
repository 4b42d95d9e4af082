/* A C extension with known allocations, built by tests/conftest.py. Every function allocates
 * exactly the bytes its arguments say and, unless named "leak"/"hold", frees them before
 * returning, so a test's peak is the ground truth to the byte. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void touch(void *p, size_t n) { memset(p, 0xab, n); }

static PyObject *malloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void *p = malloc(n);
    touch(p, n);
    free(p);
    Py_RETURN_NONE;
}

static PyObject *calloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t count, size;
    if (!PyArg_ParseTuple(args, "nn", &count, &size)) return NULL;
    void *p = calloc(count, size);
    free(p);
    Py_RETURN_NONE;
}

/* malloc(a), realloc to b: the peak is max(a, b) (the old block is released by realloc). */
static PyObject *realloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t a, b;
    if (!PyArg_ParseTuple(args, "nn", &a, &b)) return NULL;
    void *p = malloc(a);
    touch(p, a);
    p = realloc(p, b);
    touch(p, b);
    free(p);
    Py_RETURN_NONE;
}

static PyObject *posix_memalign_free(PyObject *self, PyObject *args) {
    Py_ssize_t align, n;
    if (!PyArg_ParseTuple(args, "nn", &align, &n)) return NULL;
    void *p = NULL;
    if (posix_memalign(&p, align, n) != 0) return PyErr_NoMemory();
    touch(p, n);
    free(p);
    Py_RETURN_NONE;
}

static PyObject *aligned_alloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t align, n;
    if (!PyArg_ParseTuple(args, "nn", &align, &n)) return NULL;
    void *p = aligned_alloc(align, n);
    touch(p, n);
    free(p);
    Py_RETURN_NONE;
}

static PyObject *memalign_free(PyObject *self, PyObject *args) {
    Py_ssize_t align, n;
    if (!PyArg_ParseTuple(args, "nn", &align, &n)) return NULL;
    void *p = memalign(align, n);
    touch(p, n);
    free(p);
    Py_RETURN_NONE;
}

static PyObject *valloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void *p = valloc(n);
    touch(p, n);
    free(p);
    Py_RETURN_NONE;
}

static PyObject *mmap_munmap(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return PyErr_NoMemory();
    touch(p, n);
    munmap(p, n);
    Py_RETURN_NONE;
}

/* Blocks kept on purpose (for leak and lingering-allocation tests). */
static void **held = NULL;
static size_t n_held = 0;

static PyObject *hold(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void **grown = realloc(held, (n_held + 1) * sizeof(void *));
    if (grown == NULL) return PyErr_NoMemory();
    held = grown;
    held[n_held] = malloc(n);
    touch(held[n_held], n);
    n_held++;
    Py_RETURN_NONE;
}

static PyObject *release_all(PyObject *self, PyObject *noargs) {
    for (size_t i = 0; i < n_held; i++) free(held[i]);
    free(held);
    held = NULL;
    n_held = 0;
    Py_RETURN_NONE;
}

/* n threads, started with the GIL released, each mallocs `size` bytes; all blocks are live
 * together (a barrier) before any is freed: the peak is n * size. */
struct worker { pthread_barrier_t *barrier; size_t size; };

static void *worker_main(void *arg) {
    struct worker *w = arg;
    void *p = malloc(w->size);
    touch(p, w->size);
    pthread_barrier_wait(w->barrier);
    pthread_barrier_wait(w->barrier);
    free(p);
    return NULL;
}

static PyObject *threads_malloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t n, size;
    if (!PyArg_ParseTuple(args, "nn", &n, &size)) return NULL;
    if (n < 1 || n > 64) return PyErr_Format(PyExc_ValueError, "1..64 threads");
    pthread_t tids[64];
    struct worker w;
    pthread_barrier_t barrier;
    Py_BEGIN_ALLOW_THREADS
    pthread_barrier_init(&barrier, NULL, (unsigned)n + 1);
    w.barrier = &barrier;
    w.size = (size_t)size;
    for (Py_ssize_t i = 0; i < n; i++) pthread_create(&tids[i], NULL, worker_main, &w);
    pthread_barrier_wait(&barrier); /* all blocks allocated */
    pthread_barrier_wait(&barrier); /* let them free */
    for (Py_ssize_t i = 0; i < n; i++) pthread_join(tids[i], NULL);
    pthread_barrier_destroy(&barrier);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* malloc from the calling thread with the GIL released. */
static PyObject *nogil_malloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    void *p = malloc(n);
    touch(p, n);
    free(p);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"malloc_free", malloc_free, METH_VARARGS, "malloc(n), free"},
    {"calloc_free", calloc_free, METH_VARARGS, "calloc(count, size), free"},
    {"realloc_free", realloc_free, METH_VARARGS, "malloc(a), realloc(b), free"},
    {"posix_memalign_free", posix_memalign_free, METH_VARARGS, "posix_memalign, free"},
    {"aligned_alloc_free", aligned_alloc_free, METH_VARARGS, "aligned_alloc, free"},
    {"memalign_free", memalign_free, METH_VARARGS, "memalign, free"},
    {"valloc_free", valloc_free, METH_VARARGS, "valloc, free"},
    {"mmap_munmap", mmap_munmap, METH_VARARGS, "mmap(n), munmap"},
    {"hold", hold, METH_VARARGS, "malloc(n) and keep it"},
    {"release_all", release_all, METH_NOARGS, "free everything hold() kept"},
    {"threads_malloc_free", threads_malloc_free, METH_VARARGS, "n native threads, size each"},
    {"nogil_malloc_free", nogil_malloc_free, METH_VARARGS, "malloc/free without the GIL"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hgtest", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hgtest(void) { return PyModule_Create(&module); }
