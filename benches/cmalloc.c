/* Workload (b) of alloc_bench.py: n malloc(size)/free pairs done in C, with the GIL held.
 *
 * The pointer goes through a volatile global so the compiler cannot pair up and delete the
 * malloc/free calls (GCC elides an unused malloc/free pair at -O1 and above). Built by
 * alloc_bench.py at benchmark time with gcc -O2 against the running interpreter's headers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

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

static PyMethodDef methods[] = {
    {"malloc_free", malloc_free, METH_VARARGS, "malloc_free(n, size): n malloc(size)/free pairs"},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cmalloc", NULL, -1, methods};
PyMODINIT_FUNC PyInit_cmalloc(void) { return PyModule_Create(&module); }
