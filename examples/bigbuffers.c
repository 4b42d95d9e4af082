/* A tiny C extension the example builds on the fly: it allocates, and sometimes forgets. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

static char *scratch(size_t n) {
    char *p = malloc(n);
    memset(p, 0, n);
    return p;
}

static PyObject *checksum(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) return NULL;
    char *buf = scratch((size_t)n);   /* one big temporary buffer */
    unsigned long sum = 0;
    for (Py_ssize_t i = 0; i < n; i += 4096) sum += (unsigned char)buf[i];
    free(buf);
    return PyLong_FromUnsignedLong(sum);
}

static PyMethodDef methods[] = {
    {"checksum", checksum, METH_O, "allocate n bytes of scratch space and sum them"},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bigbuffers", NULL, -1, methods};
PyMODINIT_FUNC PyInit_bigbuffers(void) { return PyModule_Create(&module); }
