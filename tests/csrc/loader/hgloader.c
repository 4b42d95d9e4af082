/* hgloader: a C extension (linked with an RPATH or RUNPATH of $ORIGIN/sub) that loads
 * libraries the ways real extensions do. Each call raises RuntimeError on a loader failure
 * and leaves nothing loaded behind, so the next call loads afresh. */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>

typedef void *(*alloc_fn)(size_t);
typedef void (*free_fn)(void *);

static PyObject *loader_error(const char *step) {
    const char *why = dlerror();
    PyErr_Format(PyExc_RuntimeError, "%s: %s", step, why ? why : "failed");
    return NULL;
}

static int loaded(const char *name) {
    void *h = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
    if (h) dlclose(h);
    return h != NULL;
}

/* dlclose really unloaded `name` (no other reference, no NODELETE). */
static PyObject *require_unloaded(const char *name) {
    if (loaded(name)) {
        PyErr_Format(PyExc_RuntimeError, "%s is still loaded after dlclose", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Allocate n bytes through libinner's malloc call and free them; `h` stays open. */
static int inner_alloc_free(void *h, size_t n) {
    alloc_fn alloc = (alloc_fn)dlsym(h, "inner_alloc");
    free_fn release = (free_fn)dlsym(h, "inner_free");
    if (!alloc || !release) return -1;
    void *p = alloc(n);
    if (!p) return -1;
    release(p);
    return 0;
}

/* The extension itself dlopens libinner.so by bare name. */
static PyObject *from_extension(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void *h = dlopen("libinner.so", RTLD_NOW);
    if (!h) return loader_error("dlopen(\"libinner.so\") from the extension");
    if (inner_alloc_free(h, (size_t)n) != 0) return loader_error("inner_alloc");
    dlclose(h);
    return require_unloaded("libinner.so");
}

/* The extension loads libouter.so (by path); libouter dlopens libinner.so by bare name. */
static PyObject *from_loaded_library(PyObject *self, PyObject *args) {
    const char *outer_path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &outer_path, &n)) return NULL;
    void *outer = dlopen(outer_path, RTLD_NOW);
    if (!outer) return loader_error("dlopen(libouter)");
    int (*run)(size_t) = (int (*)(size_t))dlsym(outer, "outer_alloc_free");
    const char *(*why)(void) = (const char *(*)(void))dlsym(outer, "outer_error");
    if (!run || !why) return loader_error("dlsym(libouter)");
    int rc = run((size_t)n);
    if (rc != 0) {
        PyErr_Format(PyExc_RuntimeError, "libouter step %d failed: %s", rc, why());
        dlclose(outer);
        return NULL;
    }
    dlclose(outer);
    if (!require_unloaded("libinner.so")) return NULL;
    return require_unloaded(outer_path);
}

static PyObject *is_loaded(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    return PyBool_FromLong(loaded(name));
}

/* (RTLD_NEXT and RTLD_DEFAULT lookups made by libinterpose, libtarget's and libinterpose's
 * own definitions). libinterpose is loaded RTLD_LOCAL and needs libtarget (DT_NEEDED): its
 * RTLD_NEXT finds libtarget's definition, its RTLD_DEFAULT its own; a caller outside its
 * scope would find neither. */
static PyObject *interposer_lookups(PyObject *self, PyObject *args) {
    const char *interpose_path, *target_path;
    if (!PyArg_ParseTuple(args, "ss", &interpose_path, &target_path)) return NULL;
    void *interpose = dlopen(interpose_path, RTLD_NOW | RTLD_LOCAL);
    if (!interpose) return loader_error("dlopen(libinterpose)");
    void *target = dlopen(target_path, RTLD_NOW | RTLD_NOLOAD);
    if (!target) return loader_error("libtarget is not loaded as libinterpose's dependency");
    void *(*next)(void) = (void *(*)(void))dlsym(interpose, "interpose_next");
    void *(*dflt)(void) = (void *(*)(void))dlsym(interpose, "interpose_default");
    if (!next || !dflt) return loader_error("dlsym(libinterpose)");
    PyObject *out = Py_BuildValue("(KKKK)", (unsigned long long)(uintptr_t)next(),
                                  (unsigned long long)(uintptr_t)dflt(),
                                  (unsigned long long)(uintptr_t)dlsym(target, "hg_target"),
                                  (unsigned long long)(uintptr_t)dlsym(interpose, "hg_target"));
    dlclose(target);
    dlclose(interpose);
    return out;
}

/* libinner in a new link-map namespace (with its own C library): loads, runs, unloads. */
static PyObject *dlmopen_alloc_free(PyObject *self, PyObject *args) {
    const char *inner_path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &inner_path, &n)) return NULL;
    void *h = dlmopen(LM_ID_NEWLM, inner_path, RTLD_NOW);
    if (!h) return loader_error("dlmopen(LM_ID_NEWLM)");
    Lmid_t ns = LM_ID_BASE;
    if (dlinfo(h, RTLD_DI_LMID, &ns) != 0) return loader_error("dlinfo");
    if (ns == LM_ID_BASE) {
        PyErr_SetString(PyExc_RuntimeError, "dlmopen(LM_ID_NEWLM) loaded into the base namespace");
        return NULL;
    }
    if (inner_alloc_free(h, (size_t)n) != 0) return loader_error("inner_alloc in the new namespace");
    if (dlclose(h) != 0) return loader_error("dlclose");
    Py_RETURN_NONE;
}

static void *kept[2];

/* Load libinner (by path), allocate n bytes in it, close it; twice. Both blocks stay live
 * until the end of the call, then the extension frees them. */
static PyObject *reopen_alloc_twice(PyObject *self, PyObject *args) {
    const char *inner_path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &inner_path, &n)) return NULL;
    for (int i = 0; i < 2; i++) {
        void *h = dlopen(inner_path, RTLD_NOW);
        if (!h) return loader_error("dlopen(libinner)");
        alloc_fn alloc = (alloc_fn)dlsym(h, "inner_alloc");
        if (!alloc) return loader_error("dlsym(inner_alloc)");
        kept[i] = alloc((size_t)n);
        dlclose(h);
        if (!require_unloaded(inner_path)) return NULL;
    }
    free(kept[0]);
    free(kept[1]);
    Py_RETURN_NONE;
}

/* Load libinner (by path), allocate n bytes in it, close it; the block stays live (the
 * report made after the test names libinner's frames although libinner is gone). */
static PyObject *alloc_in_closed_library(PyObject *self, PyObject *args) {
    const char *inner_path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &inner_path, &n)) return NULL;
    void *h = dlopen(inner_path, RTLD_NOW);
    if (!h) return loader_error("dlopen(libinner)");
    alloc_fn alloc = (alloc_fn)dlsym(h, "inner_alloc");
    if (!alloc) return loader_error("dlsym(inner_alloc)");
    kept[0] = alloc((size_t)n);
    dlclose(h);
    return require_unloaded(inner_path);
}

static PyObject *release(PyObject *self, PyObject *noargs) {
    free(kept[0]);
    kept[0] = NULL;
    Py_RETURN_NONE;
}

/* libinner allocates `through_dlsym` bytes with a malloc it got from dlsym and `through_got`
 * bytes with its ordinary malloc call; both are freed. */
static PyObject *dlsym_malloc(PyObject *self, PyObject *args) {
    const char *inner_path;
    Py_ssize_t through_dlsym, through_got;
    if (!PyArg_ParseTuple(args, "snn", &inner_path, &through_dlsym, &through_got)) return NULL;
    void *h = dlopen(inner_path, RTLD_NOW);
    if (!h) return loader_error("dlopen(libinner)");
    alloc_fn by_dlsym = (alloc_fn)dlsym(h, "inner_dlsym_malloc");
    alloc_fn by_got = (alloc_fn)dlsym(h, "inner_alloc");
    free_fn release_ = (free_fn)dlsym(h, "inner_free");
    if (!by_dlsym || !by_got || !release_) return loader_error("dlsym(libinner)");
    void *a = by_dlsym((size_t)through_dlsym);
    void *b = by_got((size_t)through_got);
    release_(b);
    release_(a);
    dlclose(h);
    Py_RETURN_NONE;
}

struct churn_args {
    const char *path;
    size_t size;
    int iterations;
    int failed;
};

static void *churn_main(void *data) {
    struct churn_args *a = data;
    for (int i = 0; i < a->iterations; i++) {
        void *h = dlopen(a->path, RTLD_NOW);
        if (!h) { a->failed = 1; return NULL; }
        if (inner_alloc_free(h, a->size) != 0) a->failed = 1;
        dlclose(h);
    }
    return NULL;
}

/* `threads` native threads each load libinner (by path), allocate and free `size` bytes in
 * it and close it, `iterations` times, concurrently (objects appear and vanish while other
 * threads patch and allocate). */
static PyObject *churn(PyObject *self, PyObject *args) {
    const char *inner_path;
    Py_ssize_t size;
    int threads, iterations;
    if (!PyArg_ParseTuple(args, "snii", &inner_path, &size, &threads, &iterations)) return NULL;
    if (threads < 1 || threads > 16) return PyErr_Format(PyExc_ValueError, "1-16 threads");
    pthread_t ids[16];
    struct churn_args a[16];
    Py_BEGIN_ALLOW_THREADS
    for (int t = 0; t < threads; t++) {
        a[t] = (struct churn_args){inner_path, (size_t)size, iterations, 0};
        pthread_create(&ids[t], NULL, churn_main, &a[t]);
    }
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    Py_END_ALLOW_THREADS
    for (int t = 0; t < threads; t++)
        if (a[t].failed) return loader_error("a churn thread failed");
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"churn", churn, METH_VARARGS, NULL},
    {"from_extension", from_extension, METH_VARARGS, NULL},
    {"from_loaded_library", from_loaded_library, METH_VARARGS, NULL},
    {"is_loaded", is_loaded, METH_VARARGS, NULL},
    {"interposer_lookups", interposer_lookups, METH_VARARGS, NULL},
    {"dlmopen_alloc_free", dlmopen_alloc_free, METH_VARARGS, NULL},
    {"reopen_alloc_twice", reopen_alloc_twice, METH_VARARGS, NULL},
    {"alloc_in_closed_library", alloc_in_closed_library, METH_VARARGS, NULL},
    {"release", release, METH_NOARGS, NULL},
    {"dlsym_malloc", dlsym_malloc, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hgloader", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hgloader(void) { return PyModule_Create(&module); }
