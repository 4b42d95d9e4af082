/* A GC-tracked holder of a 4096-byte native buffer, for the leak scan's collection tests
 * (tests/test_leak_collect.py). `Holder(leaky)`: a leaky holder's dealloc forgets its buffer,
 * so the buffer is lost only once the holder is freed; `ref` is a Python reference the
 * holder owns, which makes cycles. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *ref;
    char *buffer;
    int leaky;
} Holder;

static int holder_traverse(Holder *self, visitproc visit, void *arg) {
    Py_VISIT(self->ref);
    return 0;
}

static int holder_clear(Holder *self) {
    Py_CLEAR(self->ref);
    return 0;
}

static void holder_dealloc(Holder *self) {
    PyObject_GC_UnTrack(self);
    holder_clear(self);
    if (!self->leaky) free(self->buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int holder_init(Holder *self, PyObject *args, PyObject *kwds) {
    int leaky = 0;
    if (!PyArg_ParseTuple(args, "|p", &leaky)) return -1;
    self->leaky = leaky;
    self->buffer = malloc(4096);
    if (self->buffer == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(self->buffer, 0x5a, 4096);
    return 0;
}

static PyObject *holder_get_ref(Holder *self, void *closure) {
    PyObject *ref = self->ref ? self->ref : Py_None;
    Py_INCREF(ref);
    return ref;
}

static int holder_set_ref(Holder *self, PyObject *value, void *closure) {
    PyObject *old = self->ref;
    Py_XINCREF(value);
    self->ref = value;
    Py_XDECREF(old);
    return 0;
}

static PyGetSetDef holder_getset[] = {
    {"ref", (getter)holder_get_ref, (setter)holder_set_ref, "an owned reference", NULL},
    {NULL},
};

static PyTypeObject HolderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hgcycle.Holder",
    .tp_basicsize = sizeof(Holder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)holder_init,
    .tp_dealloc = (destructor)holder_dealloc,
    .tp_traverse = (traverseproc)holder_traverse,
    .tp_clear = (inquiry)holder_clear,
    .tp_getset = holder_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hgcycle", NULL, -1, NULL};

PyMODINIT_FUNC PyInit_hgcycle(void) {
    if (PyType_Ready(&HolderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&HolderType);
    if (PyModule_AddObject(m, "Holder", (PyObject *)&HolderType) < 0) {
        Py_DECREF(&HolderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
