/* Known leaks for heapgate's leak tests, built by the tests with gcc -g. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* malloc'd and forgotten: definitely lost. */
static PyObject *leak_malloc(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    char *p = malloc(n);
    memset(p, 0x11, n);
    Py_RETURN_NONE;
}

static PyObject *leak_calloc(PyObject *self, PyObject *args) {
    Py_ssize_t count, size;
    if (!PyArg_ParseTuple(args, "nn", &count, &size)) return NULL;
    char *p = calloc(count, size);
    p[0] = 1;
    Py_RETURN_NONE;
}

/* Kept in a static cache: still reachable. */
static void *cache = NULL;

static PyObject *fill_cache(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    if (cache == NULL) {
        cache = malloc(n);
        memset(cache, 0x22, n);
    }
    Py_RETURN_NONE;
}

/* A linked list whose head pointer is dropped: head definitely lost, the rest indirectly. */
struct node { struct node *next; char payload[]; };

static PyObject *leak_list(PyObject *self, PyObject *args) {
    Py_ssize_t nodes, size;
    if (!PyArg_ParseTuple(args, "nn", &nodes, &size)) return NULL;
    struct node *head = NULL;
    for (Py_ssize_t i = 0; i < nodes; i++) {
        struct node *n = malloc(sizeof(struct node) + size);
        memset(n->payload, 0x33, size);
        n->next = head;
        head = n;
    }
    Py_RETURN_NONE;
}

/* Each of n threads (GIL released) leaks `size` bytes. */
static void *leaky_worker(void *arg) {
    size_t size = *(size_t *)arg;
    char *p = malloc(size);
    memset(p, 0x44, size);
    return NULL;
}

static PyObject *leak_in_threads(PyObject *self, PyObject *args) {
    Py_ssize_t n, size;
    if (!PyArg_ParseTuple(args, "nn", &n, &size)) return NULL;
    if (n < 1 || n > 64) return PyErr_Format(PyExc_ValueError, "1..64 threads");
    pthread_t tids[64];
    size_t s = (size_t)size;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) pthread_create(&tids[i], NULL, leaky_worker, &s);
    for (Py_ssize_t i = 0; i < n; i++) pthread_join(tids[i], NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Python objects created through the C API whose references are never released. */
static PyObject *leak_pyobjects(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromFormat("leaked string number %zd with some padding", i);
        PyObject *l = PyList_New(3);
        (void)s;
        (void)l;
    }
    Py_RETURN_NONE;
}

/* The same objects, released: no leak. */
static PyObject *release_pyobjects(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromFormat("leaked string number %zd with some padding", i);
        PyObject *l = PyList_New(3);
        Py_XDECREF(s);
        Py_XDECREF(l);
    }
    Py_RETURN_NONE;
}

/* One object of a type CPython keeps a free list for: a list or tuple of two Nones, a dict
 * with one item (its keys object has a free list too), a float. */
static PyObject *new_object(const char *kind) {
    if (strcmp(kind, "list") == 0) {
        PyObject *l = PyList_New(2);
        if (l == NULL) return NULL;
        for (Py_ssize_t i = 0; i < 2; i++) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(l, i, Py_None);
        }
        return l;
    }
    if (strcmp(kind, "tuple") == 0) return PyTuple_Pack(2, Py_None, Py_None);
    if (strcmp(kind, "dict") == 0) {
        PyObject *d = PyDict_New();
        if (d != NULL && PyDict_SetItemString(d, "key", Py_None) < 0) Py_CLEAR(d);
        return d;
    }
    if (strcmp(kind, "float") == 0) return PyFloat_FromDouble(1.5);
    return PyErr_Format(PyExc_ValueError, "unknown kind %s", kind);
}

static PyObject *make_object(PyObject *self, PyObject *args) {
    const char *kind;
    if (!PyArg_ParseTuple(args, "s", &kind)) return NULL;
    return new_object(kind);
}

/* n such objects whose references are never released. */
static PyObject *leak_objects(PyObject *self, PyObject *args) {
    const char *kind;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &kind, &n)) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (new_object(kind) == NULL) return NULL;
    }
    Py_RETURN_NONE;
}

/* A reference taken and never released. */
static PyObject *leak_reference(PyObject *self, PyObject *obj) {
    Py_INCREF(obj);
    Py_RETURN_NONE;
}

#include <malloc.h> /* malloc_usable_size (kept here: the tests name the lines above) */

/* malloc(n), filled with `fill`, its address written at `slot` (aligned or not) and kept
 * nowhere else: the leak a test plants where only stale memory should hold it. */
static void leave_leaked_address_at(void *slot, Py_ssize_t n, int fill) {
    void *p = malloc(n);
    memset(p, fill, n);
    memcpy(slot, &p, sizeof p);
}

/* malloc'd and forgotten, its address left only in the slack of `obj`'s chunk: the bytes
 * malloc gave past the end of `obj` (a GC-tracked object too big for pymalloc), as a previous
 * occupant of that memory would leave it. False when the chunk has no such word. */
static PyObject *leak_into_slack(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On", &obj, &n)) return NULL;
    if (!PyObject_IS_GC(obj)) return PyErr_Format(PyExc_TypeError, "a GC-tracked object");
    char *start = (char *)obj - 2 * sizeof(void *); /* its GC head */
    size_t end = 2 * sizeof(void *) + Py_TYPE(obj)->tp_basicsize +
                 Py_SIZE(obj) * Py_TYPE(obj)->tp_itemsize;
    size_t usable = malloc_usable_size(start);
    if (usable < end + sizeof(void *)) Py_RETURN_FALSE;
    leave_leaked_address_at(start + usable - sizeof(void *), n, 0x55);
    Py_RETURN_TRUE;
}

/* malloc'd and forgotten, its address left in the word after `obj` (a GC-tracked object in a
 * pymalloc block: GC head plus object take `used` bytes, as sys.getsizeof says) when that
 * word is still in the object's 16-byte aligned block. False when it is not. */
static PyObject *leak_past_object(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t used, n;
    if (!PyArg_ParseTuple(args, "Onn", &obj, &used, &n)) return NULL;
    if (!PyObject_IS_GC(obj)) return PyErr_Format(PyExc_TypeError, "a GC-tracked object");
    if (used % 16 != 8) Py_RETURN_FALSE;
    leave_leaked_address_at((char *)obj - 2 * sizeof(void *) + used, n, 0x5a);
    Py_RETURN_TRUE;
}

/* malloc(n), forgotten; a point 256 bytes into it left in the unused bits of str `s`'s state
 * word (its 32-bit state's unnamed bits and the padding after it, which CPython never writes
 * or reads), under the state's first byte. False unless `s` is a compact str. */
static PyObject *leak_into_str_state(PyObject *self, PyObject *args) {
    PyObject *s;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "Un", &s, &n)) return NULL;
    if (!PyUnicode_IS_COMPACT(s) || n < 512) Py_RETURN_FALSE;
    char *p = malloc(n);
    memset(p, 0x6a, n);
    uintptr_t *state = (uintptr_t *)((char *)s + offsetof(PyASCIIObject, state));
    uintptr_t inside = (uintptr_t)(p + 256);
    *state = (inside & ~(uintptr_t)0xff) | (*state & 0xff);
    Py_RETURN_TRUE;
}

/* A dict (untracked by the collector: it holds no container) whose reference is leaked, its
 * GC head's address kept in a static, as a stale link of the collector's lists would be. */
static void *stale_gc_link = NULL;

static PyObject *leak_dict_behind_a_gc_link(PyObject *self, PyObject *unused) {
    PyObject *d = new_object("dict");
    if (d == NULL) return NULL;
    stale_gc_link = (char *)d - 2 * sizeof(void *);
    Py_RETURN_NONE;
}

#include <dlfcn.h>
#include <link.h>

/* malloc'd and forgotten, its address left only in GNU readline's history array past the NULL
 * after its last entry (slots readline never writes, as a previous occupant of that memory
 * would leave them), for the readline module at `path`. False without room or GNU readline. */
static PyObject *leak_into_readline_history(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &path, &n)) return NULL;
    void *module = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (module == NULL) Py_RETURN_FALSE;
    void **(*history_list)(void) = (void **(*)(void))dlsym(module, "history_list");
    int *history_length = dlsym(module, "history_length");
    void **array = history_list != NULL && history_length != NULL ? history_list() : NULL;
    dlclose(module);
    if (array == NULL || malloc_usable_size(array) < (*history_length + 3) * sizeof(void *))
        Py_RETURN_FALSE;
    leave_leaked_address_at(&array[*history_length + 2], n, 0x66);
    Py_RETURN_TRUE;
}

/* readline's termcap buffer: the 4080 bytes _rl_init_terminal_io mallocs for tgetent, which
 * the ncurses emulation ignores. Found as the block readline's writable segments and ncurses'
 * _nc_globals (tgetent's cache) both point to. */
struct segments { const void *inside; char *ranges[8][2]; int n; };

static int find_segments(struct dl_phdr_info *info, size_t size, void *data) {
    struct segments *s = data;
    int holds = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        char *start = (char *)info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && (const char *)s->inside >= start &&
            (const char *)s->inside < start + ph->p_memsz)
            holds = 1;
    }
    if (!holds) return 0;
    for (int i = 0; i < info->dlpi_phnum && s->n < 8; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_W)) continue;
        char *start = (char *)info->dlpi_addr + ph->p_vaddr;
        s->ranges[s->n][0] = (char *)(((uintptr_t)start + 7) & ~(uintptr_t)7);
        s->ranges[s->n][1] = (char *)(((uintptr_t)start + ph->p_memsz) & ~(uintptr_t)7);
        s->n++;
    }
    return 1;
}

static void *readline_term_buffer(const char *path) {
    void *module = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (module == NULL) return NULL;
    void *globals = dlsym(module, "_nc_globals");
    struct segments s = {.inside = dlsym(module, "rl_readline_version"), .n = 0};
    dlclose(module);
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (globals == NULL || s.inside == NULL ||
        !dladdr1(globals, &info, (void **)&sym, RTLD_DL_SYMENT) || sym == NULL)
        return NULL;
    dl_iterate_phdr(find_segments, &s);
    void **g = globals;
    size_t n_globals = sym->st_size / sizeof(void *);
    for (int r = 0; r < s.n; r++) {
        for (void **w = (void **)s.ranges[r][0]; w < (void **)s.ranges[r][1]; w++) {
            if (*w == NULL || (uintptr_t)*w % 16 != 0) continue;
            for (size_t i = 0; i < n_globals; i++) {
                if (g[i] == *w && malloc_usable_size(*w) == 4088) return *w;
            }
        }
    }
    return NULL;
}

/* malloc(n) and forgotten; its address returned as an int. */
static PyObject *leak_address(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    void *p = malloc(n);
    memset(p, 0x55, n);
    return PyLong_FromVoidPtr(p);
}

/* malloc(n), its address written into readline's termcap buffer. */
static PyObject *leak_into_readline_term_buffer(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &path, &n)) return NULL;
    void **buffer = readline_term_buffer(path);
    if (buffer == NULL) Py_RETURN_FALSE;
    leave_leaked_address_at(&buffer[64], n, 0x77);
    Py_RETURN_TRUE;
}

/* GNU readline's key maps bound under its standard ones (the prefixes of key sequences, such
 * as the arrow keys' ESC [) are malloc'd: 257 entries of 16 bytes in a chunk 8 bytes bigger.
 * malloc(n), its address written into those 8 bytes of the first such map found. */
static PyObject *leak_into_readline_keymap_slack(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &path, &n)) return NULL;
    void *module = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (module == NULL) Py_RETURN_FALSE;
    const char *names[] = {"emacs_standard_keymap", "emacs_meta_keymap", "emacs_ctlx_keymap"};
    char *found = NULL;
    for (int m = 0; m < 3 && found == NULL; m++) {
        char *map = dlsym(module, names[m]);
        for (int i = 0; map != NULL && i < 257 && found == NULL; i++) {
            char *sub = *(char **)(map + i * 16 + 8);
            Dl_info info;
            /* ISKMAP, and not in a loaded object's data: on the heap */
            if (map[i * 16] == 1 && sub != NULL && !dladdr(sub, &info) &&
                malloc_usable_size(sub) >= 257 * 16 + sizeof(void *))
                found = sub;
        }
    }
    dlclose(module);
    if (found == NULL) Py_RETURN_FALSE;
    leave_leaked_address_at(found + 257 * 16, n, 0x88);
    Py_RETURN_TRUE;
}

/* 3.13 keeps an instance's attribute values inline after its basic size: a word whose first
 * two bytes are their capacity and count, the values, then an insertion-order array of a byte
 * per value, rounded up to a word and written only up to the count. malloc(n), its address
 * left in that array's first whole word past the count. False before 3.13 or without room. */
static PyObject *leak_into_inline_values(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On", &obj, &n)) return NULL;
#if PY_VERSION_HEX >= 0x030D0000 && defined(Py_TPFLAGS_INLINE_VALUES)
    if (!PyType_HasFeature(Py_TYPE(obj), Py_TPFLAGS_INLINE_VALUES)) Py_RETURN_FALSE;
    uint8_t *values = (uint8_t *)obj + Py_TYPE(obj)->tp_basicsize;
    size_t capacity = values[0], count = values[1];
    uint8_t *order = values + sizeof(void *) + capacity * sizeof(void *);
    size_t from = (count + sizeof(void *) - 1) / sizeof(void *) * sizeof(void *);
    size_t end = (capacity + sizeof(void *) - 1) / sizeof(void *) * sizeof(void *);
    if (from + sizeof(void *) > end) Py_RETURN_FALSE;
    leave_leaked_address_at(order + from, n, 0x9f);
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

/* An instance's split attribute values (3.11-3.13, for a type that manages its dict but keeps
 * no values inline, such as a subclass of list) come with a byte per value giving their
 * insertion order, written only as far as there are values. 3.11 and 3.12 keep that array in a
 * prefix before the values (sized by its last byte, written downwards from the count before
 * it), found from the instance's pre-header; 3.13 keeps it after the values, in a block found
 * from the instance's dict whose first bytes are the capacity and count. malloc(n), its
 * address left in the array's first unwritten word. False when there is no such array. */
static PyObject *leak_into_split_values(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On", &obj, &n)) return NULL;
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
    const size_t word = sizeof(void *);
    if (!PyType_HasFeature(Py_TYPE(obj), Py_TPFLAGS_MANAGED_DICT)) Py_RETURN_FALSE;
    uint8_t *values, *slot;
#if PY_VERSION_HEX >= 0x030D0000
    PyDictObject *dict = *(PyDictObject **)((char *)obj - 3 * word);
    if (dict == NULL || dict->ma_values == NULL) Py_RETURN_FALSE;
    values = (uint8_t *)dict->ma_values;
    if (values[2] /* embedded in the object */) Py_RETURN_FALSE;
    size_t capacity = values[0], count = values[1];
    size_t from = (count + word - 1) / word * word, end = (capacity + word - 1) / word * word;
    if (from + word > end) Py_RETURN_FALSE;
    slot = values + word + capacity * word + from;
#else
#if PY_VERSION_HEX >= 0x030C0000
    uintptr_t tagged = ((uintptr_t *)obj)[-3]; /* the values' address less one */
    if (!(tagged & 1)) Py_RETURN_FALSE;
    values = (uint8_t *)(tagged + 1);
#else
    values = ((uint8_t **)obj)[-4];
    if (values == NULL) Py_RETURN_FALSE;
#endif
    size_t prefix = values[-1], count = values[-2];
    if (prefix < word + 2 + count) Py_RETURN_FALSE;
    slot = values - prefix;
#endif
    leave_leaked_address_at(slot, n, 0x5d);
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

/* malloc(n) in a thread and forgotten, its address left in every word of a block that thread
 * then frees: stale bytes in free memory of the heap of the thread's arena (glibc gives each
 * of the first threads an arena of its own), which are no root. */
static void *leave_address_in_a_freed_block(void *arg) {
    size_t size = *(size_t *)arg;
    char *p = malloc(size);
    memset(p, 0x6b, size);
    size_t words = 2048 / sizeof(void *);
    void **block = malloc(words * sizeof *block);
    for (size_t i = 0; i < words; i++) block[i] = p;
    free(block);
    return NULL;
}

static PyObject *leak_into_thread_free_chunk(PyObject *self, PyObject *args) {
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "n", &size)) return NULL;
    pthread_t tid;
    size_t s = (size_t)size;
    Py_BEGIN_ALLOW_THREADS
    pthread_create(&tid, NULL, leave_address_in_a_freed_block, &s);
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* A class's docstring is copied into a block of its length and terminator: malloc(n), its
 * address left in the first whole word after the terminator, within pymalloc's 16-byte
 * multiple. False when there is no such word. */
static PyObject *leak_into_type_doc(PyObject *self, PyObject *args) {
    PyObject *type;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!n", &PyType_Type, &type, &n)) return NULL;
    char *doc = (char *)((PyTypeObject *)type)->tp_doc;
    if (doc == NULL) Py_RETURN_FALSE;
    size_t size = strlen(doc) + 1;
    size_t slot = (size + sizeof(void *) - 1) / sizeof(void *) * sizeof(void *);
    if (slot + sizeof(void *) > ((size + 15) & ~(size_t)15)) Py_RETURN_FALSE;
    leave_leaked_address_at(doc + slot, n, 0x3d);
    Py_RETURN_TRUE;
}

/* A generator's coroutine-origin / async-generator-finalizer word, which no generator sets
 * (3.11+: CPython leaves it as the memory was). malloc(n), its address left there. */
static PyObject *leak_into_generator_origin(PyObject *self, PyObject *args) {
    PyObject *gen;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!n", &PyGen_Type, &gen, &n)) return NULL;
#if PY_VERSION_HEX >= 0x030B0000
    leave_leaked_address_at(&((PyGenObject *)gen)->gi_origin_or_finalizer, n, 0x4f);
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

/* A frame object made while its frame runs elsewhere (a thread's stack of frames, a
 * generator) has room for a copy of the frame, written only when the frame returns: its
 * basic size ends where the copy's slots would start. malloc(n), its address left in the
 * first slot. False when the object has no slot. */
static PyObject *leak_into_frame_room(PyObject *self, PyObject *args) {
#if PY_VERSION_HEX < 0x030B0000
    (void)args;
    Py_RETURN_FALSE;
#else
    PyObject *frame;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!n", &PyFrame_Type, &frame, &n)) return NULL;
    PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame);
    /* Made with a slot for each of its code's (a frame object has no item count). */
    int slots = code->co_nlocalsplus + code->co_stacksize;
    Py_DECREF(code);
    if (slots < 1 || Py_TYPE(frame)->tp_itemsize != sizeof(void *)) Py_RETURN_FALSE;
    leave_leaked_address_at((char *)frame + Py_TYPE(frame)->tp_basicsize, n, 0x6e);
    Py_RETURN_TRUE;
#endif
}

/* GNU readline's function map: `funmap`, an array grown 64 slots at a time and written up to
 * the NULL after its last entry, of malloc'd 16-byte entries (a name and a function) in chunks
 * of 24 bytes of memory or more. malloc(n), its address written past the first entry's two
 * words (`in_entry`) or into the array's slot after that NULL. */
static void *funmap_place(const char *path, int in_entry) {
    void *module = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (module == NULL) return NULL;
    char ***funmap = dlsym(module, "funmap");
    dlclose(module);
    if (funmap == NULL || *funmap == NULL) return NULL;
    char **array = *funmap;
    size_t entries = 0;
    while (array[entries] != NULL) entries++;
    if (in_entry)
        return entries > 0 && malloc_usable_size(array[0]) >= 24 ? array[0] + 16 : NULL;
    size_t slots = malloc_usable_size(array) / sizeof(char *);
    return entries + 2 <= slots ? &array[entries + 1] : NULL;
}

static PyObject *leak_into_readline_funmap(PyObject *self, PyObject *args, int in_entry) {
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &path, &n)) return NULL;
    void *place = funmap_place(path, in_entry);
    if (place == NULL) Py_RETURN_FALSE;
    leave_leaked_address_at(place, n, 0x8f);
    Py_RETURN_TRUE;
}

static PyObject *leak_into_readline_funmap_entry(PyObject *self, PyObject *args) {
    return leak_into_readline_funmap(self, args, 1);
}

static PyObject *leak_into_readline_funmap_array(PyObject *self, PyObject *args) {
    return leak_into_readline_funmap(self, args, 0);
}

#include <sys/uio.h>
#include <unistd.h>

/* The word at `addr` of this process, read without faulting; 0 when unreadable. */
static size_t word_or_zero(const void *addr) {
    size_t w = 0;
    struct iovec local = {&w, sizeof w}, remote = {(void *)addr, sizeof w};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == sizeof w ? w : 0;
}

/* ncurses' tparm keeps the format it analyses in a malloc'd buffer beside its size in bytes,
 * in the terminal (cur_term); malloc(n), its address written into the buffer past the size. */
static PyObject *leak_into_ncurses_tparm_buffer(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "sn", &path, &n)) return NULL;
    void *module = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (module == NULL) Py_RETURN_FALSE;
    void **cur_term = dlsym(module, "cur_term");
    dlclose(module);
    if (cur_term == NULL || *cur_term == NULL) Py_RETURN_FALSE;
    size_t *words = *cur_term;
    size_t count = malloc_usable_size(words) / sizeof(size_t);
    char *found = NULL;
    size_t bytes = 0;
    for (size_t i = 0; i + 1 < count && found == NULL; i++) {
        char *buffer = (char *)words[i];
        size_t size = words[i + 1];
        if ((uintptr_t)buffer < 0x10000 || (uintptr_t)buffer % 16 != 0 || size == 0 || size > 4096)
            continue;
        Dl_info info;
        if (dladdr(buffer, &info)) continue;
        /* glibc's size field before it: the chunk of a request of `size` bytes (not mmapped),
         * with a word to spare past them */
        size_t field = word_or_zero(buffer - sizeof(size_t));
        size_t chunk = (size + sizeof(size_t) + 15) & ~(size_t)15;
        if (chunk < 32) chunk = 32;
        if ((field & ~(size_t)7) != chunk || (field & 2)) continue;
        size_t usable = chunk - sizeof(size_t);
        if (usable - size >= sizeof(void *) && strnlen(buffer, size) < size) {
            found = buffer;
            bytes = size;
        }
    }
    if (found == NULL) Py_RETURN_FALSE;
    size_t at = (bytes + sizeof(void *) - 1) / sizeof(void *) * sizeof(void *);
    if (at + sizeof(void *) > malloc_usable_size(found)) Py_RETURN_FALSE;
    leave_leaked_address_at(found + at, n, 0x99);
    Py_RETURN_TRUE;
}

/* Objects with 4-byte items, sized as CPython sizes its variable-size objects (basic size plus
 * the items). NarrowDeclared declares one item in its basic size, as 3.12's compiled regular
 * expressions do (`code[1]`): it is allocated that item and its padding more than it writes.
 * NarrowFlexible's basic size ends where its items start. `native` is a malloc'd block or
 * NULL. Made by PyObject_NewVar, which clears nothing. */
typedef struct {
    PyObject_VAR_HEAD
    void *native;
    uint32_t items[1];
} NarrowObject;

static void narrow_dealloc(PyObject *self) { PyObject_Free(self); }

static PyTypeObject NarrowDeclared = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hgleak.NarrowDeclared",
    .tp_basicsize = sizeof(NarrowObject),
    .tp_itemsize = sizeof(uint32_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = narrow_dealloc,
};

static PyTypeObject NarrowFlexible = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hgleak.NarrowFlexible",
    .tp_basicsize = offsetof(NarrowObject, items),
    .tp_itemsize = sizeof(uint32_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = narrow_dealloc,
};

/* An object of `items` 4-byte items (written), NarrowDeclared or NarrowFlexible; its `native`
 * holds malloc(native) when native > 0; when stale > 0, malloc(stale) is forgotten and its
 * address left in the object's last word, which its items do not reach (an error if they do),
 * as a block's previous occupant would have left it. */
static PyObject *narrow_object(PyObject *self, PyObject *args) {
    int declared;
    Py_ssize_t items, native, stale;
    if (!PyArg_ParseTuple(args, "pnnn", &declared, &items, &native, &stale)) return NULL;
    PyTypeObject *type = declared ? &NarrowDeclared : &NarrowFlexible;
    if (PyType_Ready(type) < 0) return NULL;
    NarrowObject *obj = PyObject_NewVar(NarrowObject, type, items);
    if (obj == NULL) return NULL;
    size_t size = (size_t)_PyObject_VAR_SIZE(type, items);
    size_t written = offsetof(NarrowObject, items) + (size_t)items * sizeof(uint32_t);
    memset((char *)obj + offsetof(NarrowObject, native), 0, size - offsetof(NarrowObject, native));
    for (Py_ssize_t i = 0; i < items; i++) obj->items[i] = 0x01020304u;
    if (native > 0) {
        obj->native = malloc(native);
        memset(obj->native, 0x4e, native);
    }
    if (stale > 0) {
        if (written + sizeof(void *) > size) {
            Py_DECREF(obj);
            return PyErr_Format(PyExc_ValueError, "the items reach the object's last word");
        }
        leave_leaked_address_at((char *)obj + size - sizeof(void *), stale, 0x5e);
    }
    return (PyObject *)obj;
}

static PyMethodDef methods[] = {
    {"leak_malloc", leak_malloc, METH_VARARGS, "malloc(n), forgotten"},
    {"leak_calloc", leak_calloc, METH_VARARGS, "calloc(count, size), forgotten"},
    {"fill_cache", fill_cache, METH_VARARGS, "malloc(n) kept in a static"},
    {"leak_list", leak_list, METH_VARARGS, "linked list of nodes, head forgotten"},
    {"leak_in_threads", leak_in_threads, METH_VARARGS, "n threads each leak size bytes"},
    {"leak_pyobjects", leak_pyobjects, METH_VARARGS, "str and list references leaked"},
    {"release_pyobjects", release_pyobjects, METH_VARARGS, "str and list released"},
    {"make_object", make_object, METH_VARARGS, "a list, tuple, dict or float (free-list types)"},
    {"leak_objects", leak_objects, METH_VARARGS, "n such objects, references leaked"},
    {"leak_reference", leak_reference, METH_O, "Py_INCREF(obj), never released"},
    {"leak_into_slack", leak_into_slack, METH_VARARGS, "malloc(n), its address in obj's slack"},
    {"leak_into_str_state", leak_into_str_state, METH_VARARGS,
     "malloc(n), a point inside it in the unused bits of a str's state word"},
    {"leak_past_object", leak_past_object, METH_VARARGS,
     "malloc(n), its address in the word after a GC object of `used` bytes"},
    {"leak_dict_behind_a_gc_link", leak_dict_behind_a_gc_link, METH_NOARGS,
     "a dict leaked, its GC head's address kept"},
    {"leak_into_readline_history", leak_into_readline_history, METH_VARARGS,
     "malloc(n), its address in readline's unused history slots"},
    {"narrow_object", narrow_object, METH_VARARGS,
     "an object of 4-byte items, holding a malloc'd block or leaving one's address after them"},
    {"leak_address", leak_address, METH_VARARGS, "malloc(n), forgotten; its address"},
    {"leak_into_readline_term_buffer", leak_into_readline_term_buffer, METH_VARARGS,
     "malloc(n), its address in readline's termcap buffer"},
    {"leak_into_readline_keymap_slack", leak_into_readline_keymap_slack, METH_VARARGS,
     "malloc(n), its address past a malloc'd readline key map"},
    {"leak_into_inline_values", leak_into_inline_values, METH_VARARGS,
     "malloc(n), its address past the written part of an instance's inline values' order"},
    {"leak_into_split_values", leak_into_split_values, METH_VARARGS,
     "malloc(n), its address left in the unwritten order bytes of obj's split values"},
    {"leak_into_thread_free_chunk", leak_into_thread_free_chunk, METH_VARARGS,
     "malloc(n) in a thread, forgotten; its address left in a block the thread freed"},
    {"leak_into_type_doc", leak_into_type_doc, METH_VARARGS,
     "malloc(n), its address in the block of a class's docstring, past its end"},
    {"leak_into_generator_origin", leak_into_generator_origin, METH_VARARGS,
     "malloc(n), its address in a generator's unused origin/finalizer word"},
    {"leak_into_frame_room", leak_into_frame_room, METH_VARARGS,
     "malloc(n), its address in the unwritten room of a frame object whose frame runs"},
    {"leak_into_readline_funmap_entry", leak_into_readline_funmap_entry, METH_VARARGS,
     "malloc(n), its address past a readline function map entry's two words"},
    {"leak_into_readline_funmap_array", leak_into_readline_funmap_array, METH_VARARGS,
     "malloc(n), its address in the function map's slot after its NULL"},
    {"leak_into_ncurses_tparm_buffer", leak_into_ncurses_tparm_buffer, METH_VARARGS,
     "malloc(n), its address past the text in ncurses' tparm format buffer"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hgleak", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hgleak(void) { return PyModule_Create(&module); }
