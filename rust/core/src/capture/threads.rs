//! Threads started while a test runs are charged to that test (and so are their own
//! children): `pthread_create` is hooked and the new thread starts through a trampoline
//! that sets its charge before running the caller's start routine.

use libc::{c_int, c_void, pthread_attr_t, pthread_t};

use super::guard::Charge;
use super::{charge_for_new_thread, is_active};

pub(crate) type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;
pub(crate) type PthreadCreate =
    unsafe extern "C" fn(*mut pthread_t, *const pthread_attr_t, StartRoutine, *mut c_void) -> c_int;

struct Trampoline {
    start: StartRoutine,
    arg: *mut c_void,
    charge: Charge,
}

extern "C" fn trampoline_start(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the Box leaked by pthread_create_hook for this thread alone.
    let t = unsafe { Box::from_raw(data as *mut Trampoline) };
    t.charge.set();
    (t.start)(t.arg)
}

pub(crate) unsafe extern "C" fn pthread_create_hook(
    thread: *mut pthread_t,
    attr: *const pthread_attr_t,
    start: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    let charge = if is_active() {
        charge_for_new_thread()
    } else {
        None
    };
    let Some(charge) = charge else {
        // SAFETY: forwards the caller's arguments to the C library.
        return unsafe { libc::pthread_create(thread, attr, start, arg) };
    };
    // Our own allocator never goes through the hooks, so this box is not charged to anyone.
    let data = Box::into_raw(Box::new(Trampoline { start, arg, charge })) as *mut c_void;
    // SAFETY: the trampoline takes ownership of `data` when the thread starts.
    let rc = unsafe { libc::pthread_create(thread, attr, trampoline_start, data) };
    if rc != 0 {
        // SAFETY: the thread was not created, so `data` is still ours.
        drop(unsafe { Box::from_raw(data as *mut Trampoline) });
    }
    rc
}
