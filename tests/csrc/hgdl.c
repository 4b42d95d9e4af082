/* A plain shared library loaded with ctypes (dlopen) after tracking has begun. */
#include <stdlib.h>
#include <string.h>

void hgdl_malloc_free(size_t n) {
    char *p = malloc(n);
    memset(p, 1, n);
    free(p);
}
