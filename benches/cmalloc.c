/* C workloads of the benchmarks, with the GIL held: malloc_free (alloc_bench.py's (b), each
 * block freed at once) and malloc_hold (suite_bench.py: n blocks all live, then all freed).
 *
 * The pointer goes through a volatile global so the compiler cannot pair up and delete the
 * malloc/free calls (GCC elides an unused malloc/free pair at -O1 and above). Built by
 * alloc_bench.py at benchmark time with gcc -O2 against the running interpreter's headers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <sys/mman.h>

void *volatile cmalloc_sink;

static PyObject *malloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t n, size;
    if (!PyArg_ParseTuple(args, "nn", &n, &size)) return NULL;
    if (n < 0 || size < 0) {
        PyErr_SetString(PyExc_ValueError, "n and size must be >= 0");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        cmalloc_sink = malloc((size_t)size);
        if (cmalloc_sink == NULL) return PyErr_NoMemory();
        free(cmalloc_sink);
    }
    Py_RETURN_NONE;
}

/* n blocks of `size` bytes held live together, then freed in allocation order: a tracker's
 * live table holds n entries at the end. The pointer array comes from mmap, so it is not one
 * of the n events. */
static PyObject *malloc_hold(PyObject *self, PyObject *args) {
    Py_ssize_t n, size;
    if (!PyArg_ParseTuple(args, "nn", &n, &size)) return NULL;
    if (n < 0 || size < 0) {
        PyErr_SetString(PyExc_ValueError, "n and size must be >= 0");
        return NULL;
    }
    size_t bytes = (size_t)n * sizeof(void *) + 1;
    void **blocks = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (blocks == MAP_FAILED) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        blocks[i] = malloc((size_t)size);
        if (blocks[i] == NULL) {
            for (Py_ssize_t j = 0; j < i; j++) free(blocks[j]);
            munmap(blocks, bytes);
            return PyErr_NoMemory();
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) free(blocks[i]);
    munmap(blocks, bytes);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"malloc_free", malloc_free, METH_VARARGS, "malloc_free(n, size): n malloc(size)/free pairs"},
    {"malloc_hold", malloc_hold, METH_VARARGS, "malloc_hold(n, size): n mallocs held live, then freed"},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cmalloc", NULL, -1, methods};
PyMODINIT_FUNC PyInit_cmalloc(void) { return PyModule_Create(&module); }
