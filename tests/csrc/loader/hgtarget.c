/* libtarget.so: the definition libinterpose.so's RTLD_NEXT lookup must find. */
int hg_target(void) { return 2; }
