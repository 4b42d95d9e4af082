/* libinner.so: found by bare name only through its caller's RPATH/RUNPATH ($ORIGIN/sub). */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

void *inner_alloc(size_t n) {
    char *p = malloc(n); /* @line inner_malloc */
    if (p) memset(p, 7, n);
    return p;
}

void inner_free(void *p) { free(p); }

/* Gets malloc through dlsym and calls it: the C library's malloc, not a patched GOT entry. */
void *inner_dlsym_malloc(size_t n) {
    void *(*real_malloc)(size_t) = (void *(*)(size_t))dlsym(RTLD_DEFAULT, "malloc");
    char *p = real_malloc(n);
    if (p) memset(p, 7, n);
    return p;
}
