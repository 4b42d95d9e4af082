/* libinterpose.so: interposes hg_target and looks the next definition up, as an LD_PRELOAD
 * shim does. RTLD_NEXT is relative to the caller of dlsym: this object. */
#define _GNU_SOURCE
#include <dlfcn.h>

int hg_target(void) { return 1; }

void *interpose_next(void) { return dlsym(RTLD_NEXT, "hg_target"); }
void *interpose_default(void) { return dlsym(RTLD_DEFAULT, "hg_target"); }
