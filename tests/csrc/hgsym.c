/* A C extension for the native-stack tests (tests/test_native.py): a known call chain
 * Python -> hgsym_alloc_free -> hgsym_middle -> hgsym_leaf_alloc -> malloc. The functions are
 * exported and never inlined so their names stay in .dynsym after `strip --strip-all`; the
 * "@line" comments mark the lines the tests expect in reports. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#define HGSYM_API __attribute__((noinline, used, visibility("default")))

HGSYM_API void *hgsym_leaf_alloc(size_t n) {
    void *p = malloc(n); /* @line leaf */
    if (p != NULL) memset(p, 0x5a, n);
    return p;
}

HGSYM_API void *hgsym_middle(size_t n) {
    void *p = hgsym_leaf_alloc(n); /* @line middle */
    __asm__ volatile("" ::: "memory");
    return p;
}

HGSYM_API PyObject *hgsym_alloc_free(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void *p = hgsym_middle((size_t)n); /* @line method */
    if (p == NULL) return PyErr_NoMemory();
    free(p);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"alloc_free", hgsym_alloc_free, METH_VARARGS, "malloc(n) through two C frames, then free"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hgsym", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hgsym(void) { return PyModule_Create(&module); }
