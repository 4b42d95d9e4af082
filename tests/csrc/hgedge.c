/* hgedge: allocation edge cases. Each call checks what the C library did (result, errno,
 * untouched outputs) and raises RuntimeError if it differs from the expectation, so the same
 * call run untracked proves the expectation and run tracked proves heapgate changes nothing.
 * The bytes each call leaves at its peak are documented per function (see test_edge_cases.py). */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(cond, ...)                                               \
    do {                                                               \
        if (!(cond)) {                                                 \
            PyErr_Format(PyExc_RuntimeError, __VA_ARGS__);             \
            return NULL;                                               \
        }                                                              \
    } while (0)

static size_t page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

/* Peak n: realloc(NULL, n) is malloc(n). */
static PyObject *realloc_null(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    char *p = realloc(NULL, (size_t)n);
    CHECK(p, "realloc(NULL, n) failed");
    memset(p, 1, (size_t)n);
    free(p);
    Py_RETURN_NONE;
}

/* Peak n: glibc's realloc(p, 0) frees p (and returns NULL), so a second n-byte block after
 * it does not raise the peak. */
static PyObject *realloc_zero(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    char *p = malloc((size_t)n);
    CHECK(p, "malloc failed");
    memset(p, 1, (size_t)n);
    void *q = realloc(p, 0);
    CHECK(q == NULL, "glibc's realloc(p, 0) returned %p, not NULL", q);
    char *r = malloc((size_t)n);
    CHECK(r, "malloc failed");
    memset(r, 1, (size_t)n);
    free(r);
    Py_RETURN_NONE;
}

/* Peak n: free(NULL) is nothing, and leaves errno alone. */
static PyObject *free_null(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    errno = 4242;
    for (int i = 0; i < 100; i++) free(NULL);
    CHECK(errno == 4242, "free(NULL) changed errno to %d", errno);
    char *p = malloc((size_t)n);
    CHECK(p, "malloc failed");
    memset(p, 1, (size_t)n);
    free(p);
    Py_RETURN_NONE;
}

/* Peak n: a malloc the C library refuses returns NULL with ENOMEM and counts nothing; a
 * realloc it refuses leaves the old block (n bytes) alive and counted. */
static PyObject *failed_malloc(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    size_t huge = SIZE_MAX / 2;
    errno = 0;
    void *p = malloc(huge);
    CHECK(p == NULL && errno == ENOMEM, "malloc(huge): %p, errno %d", p, errno);
    errno = 0;
    p = calloc(huge, 4);
    CHECK(p == NULL && errno == ENOMEM, "calloc(huge, 4): %p, errno %d", p, errno);
    char *q = malloc((size_t)n);
    CHECK(q, "malloc failed");
    memset(q, 1, (size_t)n);
    errno = 0;
    void *r = realloc(q, huge);
    CHECK(r == NULL && errno == ENOMEM, "realloc(q, huge): %p, errno %d", r, errno);
    free(q);
    Py_RETURN_NONE;
}

/* Peak n: posix_memalign with an alignment that is not a power of two times sizeof(void *)
 * returns EINVAL, leaves *out and errno untouched, and counts nothing. */
static PyObject *bad_posix_memalign(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void *out = (void *)0x1234;
    errno = 4242;
    int rc = posix_memalign(&out, 24, (size_t)n);
    CHECK(rc == EINVAL, "posix_memalign(24): %d", rc);
    CHECK(out == (void *)0x1234, "posix_memalign touched *out: %p", out);
    CHECK(errno == 4242, "posix_memalign changed errno to %d", errno);
    rc = posix_memalign(&out, 64, (size_t)n);
    CHECK(rc == 0, "posix_memalign(64): %d", rc);
    memset(out, 1, (size_t)n);
    free(out);
    Py_RETURN_NONE;
}

/* aligned_alloc(3, n): glibc before 2.38 accepts any alignment, later ones return NULL with
 * EINVAL. Returns whether it succeeded (the caller knows the peak: n if so, 0 if not). */
static PyObject *odd_aligned_alloc(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    errno = 0;
    char *p = aligned_alloc(3, (size_t)n);
    if (p == NULL) {
        CHECK(errno == EINVAL, "aligned_alloc(3) failed with errno %d", errno);
        Py_RETURN_FALSE;
    }
    memset(p, 1, (size_t)n);
    free(p);
    Py_RETURN_TRUE;
}

/* Peak n: file-backed mappings (private and shared) are not counted; an anonymous n-byte
 * mapping is. `path` is a scratch file. */
static PyObject *file_mmap(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &path, &n)) return NULL;
    size_t file_len = 16 * page();
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0, "open(%s): errno %d", path, errno);
    CHECK(ftruncate(fd, (off_t)file_len) == 0, "ftruncate: errno %d", errno);
    char *private_map = mmap(NULL, file_len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    char *shared_map = mmap(NULL, file_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    CHECK(private_map != MAP_FAILED && shared_map != MAP_FAILED, "file mmap failed: errno %d", errno);
    memset(private_map, 1, file_len);
    memset(shared_map, 1, file_len);
    char *anon = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(anon != MAP_FAILED, "anonymous mmap failed: errno %d", errno);
    memset(anon, 1, (size_t)n);
    munmap(anon, (size_t)n);
    munmap(private_map, file_len);
    munmap(shared_map, file_len);
    Py_RETURN_NONE;
}

/* Peak 10 pages: 5 pages mapped; the middle, the front and the back page unmapped (2 left);
 * an unaligned munmap fails with EINVAL and unmaps nothing; then 8 more pages. */
static PyObject *partial_munmap(PyObject *self, PyObject *noargs) {
    size_t P = page();
    char *p = mmap(NULL, 5 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap failed");
    memset(p, 1, 5 * P);
    CHECK(munmap(p + 2 * P, P) == 0, "munmap middle");
    CHECK(munmap(p, P) == 0, "munmap front");
    CHECK(munmap(p + 4 * P, P) == 0, "munmap back");
    errno = 0;
    CHECK(munmap(p + P + 1, P) == -1 && errno == EINVAL, "unaligned munmap: errno %d", errno);
    char *q = mmap(NULL, 8 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(q != MAP_FAILED, "mmap failed");
    memset(q, 1, 8 * P);
    munmap(q, 8 * P);
    munmap(p + P, P);
    munmap(p + 3 * P, P);
    Py_RETURN_NONE;
}

/* Peak 14 pages. 2 pages grown to 6 (MREMAP_MAYMOVE), shrunk to 3 in place; a 4-page
 * mapping reserved (7 live); the 3 pages moved over its first 3 (MREMAP_FIXED: 4 live); a
 * growth refused in place (ENOMEM, nothing changes); then 10 more pages (14). */
static PyObject *mremap_cases(PyObject *self, PyObject *noargs) {
    size_t P = page();
    char *p = mmap(NULL, 2 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap failed");
    memset(p, 1, 2 * P);
    char *grown = mremap(p, 2 * P, 6 * P, MREMAP_MAYMOVE);
    CHECK(grown != MAP_FAILED, "mremap grow: errno %d", errno);
    memset(grown, 2, 6 * P);
    char *shrunk = mremap(grown, 6 * P, 3 * P, 0);
    CHECK(shrunk == grown, "mremap shrink moved or failed: errno %d", errno);
    char *target = mmap(NULL, 4 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(target != MAP_FAILED, "mmap failed");
    memset(target, 3, 4 * P);
    char *moved = mremap(shrunk, 3 * P, 3 * P, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    CHECK(moved == target, "mremap fixed: %p, errno %d", (void *)moved, errno);
    CHECK(moved[0] == 2, "mremap fixed did not move the contents");
    errno = 0;
    /* The page after `moved`'s first page is mapped: growing it in place must fail. */
    char *refused = mremap(moved, P, 2 * P, 0);
    CHECK(refused == MAP_FAILED && errno == ENOMEM, "mremap in place: %p, errno %d", (void *)refused, errno);
    char *q = mmap(NULL, 10 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(q != MAP_FAILED, "mmap failed");
    memset(q, 4, 10 * P);
    munmap(q, 10 * P);
    munmap(target, 4 * P);
    Py_RETURN_NONE;
}

/* Peak n: errno is what the C library left, after failures and after successes. */
static PyObject *errno_kept(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    errno = 0;
    void *m = mmap(NULL, (size_t)n, PROT_READ, MAP_PRIVATE, -1, 0); /* no MAP_ANONYMOUS, bad fd */
    CHECK(m == MAP_FAILED && errno == EBADF, "mmap(fd -1): errno %d", errno);
    errno = 0;
    CHECK(munmap((void *)1, 1) == -1 && errno == EINVAL, "munmap(1): errno %d", errno);
    errno = 0;
    CHECK(malloc(SIZE_MAX / 2) == NULL && errno == ENOMEM, "malloc(huge): errno %d", errno);
    /* Successful calls do not reset errno; nor may our recording. */
    errno = 4242;
    char *p = malloc((size_t)n);
    CHECK(p && errno == 4242, "malloc changed errno to %d", errno);
    memset(p, 1, (size_t)n);
    char *q = realloc(p, (size_t)n / 2);
    CHECK(q && errno == 4242, "realloc changed errno to %d", errno);
    free(q);
    CHECK(errno == 4242, "free changed errno to %d", errno);
    void *a = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(a != MAP_FAILED && errno == 4242, "mmap changed errno to %d", errno);
    munmap(a, (size_t)n);
    CHECK(errno == 4242, "munmap changed errno to %d", errno);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"realloc_null", realloc_null, METH_VARARGS, NULL},
    {"realloc_zero", realloc_zero, METH_VARARGS, NULL},
    {"free_null", free_null, METH_VARARGS, NULL},
    {"failed_malloc", failed_malloc, METH_VARARGS, NULL},
    {"bad_posix_memalign", bad_posix_memalign, METH_VARARGS, NULL},
    {"odd_aligned_alloc", odd_aligned_alloc, METH_VARARGS, NULL},
    {"file_mmap", file_mmap, METH_VARARGS, NULL},
    {"partial_munmap", partial_munmap, METH_NOARGS, NULL},
    {"mremap_cases", mremap_cases, METH_NOARGS, NULL},
    {"errno_kept", errno_kept, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hgedge", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hgedge(void) { return PyModule_Create(&module); }
