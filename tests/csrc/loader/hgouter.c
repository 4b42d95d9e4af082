/* libouter.so (linked with an RPATH or RUNPATH of $ORIGIN/sub): dlopens libinner.so by bare
 * name, so the loader must search *this* object's path. Returns 0, or a step that failed. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static char error[512];

const char *outer_error(void) { return error; }

int outer_alloc_free(size_t n) {
    void *inner = dlopen("libinner.so", RTLD_NOW);
    if (!inner) {
        snprintf(error, sizeof error, "dlopen: %s", dlerror());
        return 1;
    }
    void *(*alloc)(size_t) = (void *(*)(size_t))dlsym(inner, "inner_alloc");
    void (*release)(void *) = (void (*)(void *))dlsym(inner, "inner_free");
    if (!alloc || !release) {
        snprintf(error, sizeof error, "dlsym: %s", dlerror());
        return 2;
    }
    void *p = alloc(n);
    if (!p) return 3;
    release(p);
    if (dlclose(inner) != 0) return 4;
    return 0;
}
