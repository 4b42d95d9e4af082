//! Addresses heapgate holds with their top bit set: a non-canonical value that never equals a
//! pointer, so the leak scan never finds heapgate's own tables (the tracker's, the scan's:
//! they live in scanned heap memory and leave stale copies when freed) pointing at a block.

/// The tag: the top bit of a word.
pub const TAG: usize = 1 << (usize::BITS - 1);

/// `addr` as heapgate stores it.
#[inline]
pub fn tagged(addr: usize) -> usize {
    addr | TAG
}

/// The address a stored (tagged) word holds.
#[inline]
pub fn untagged(key: usize) -> usize {
    key & !TAG
}

/// An address kept with its top bit set while heapgate holds it, so that no table of the
/// scan (which lives in scanned heap memory, and leaves stale copies when freed) ever reads
/// as a pointer to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Addr(usize);

impl Addr {
    /// Hold `address`.
    pub fn new(address: usize) -> Addr {
        Addr(address | TAG)
    }

    /// The address.
    pub fn get(self) -> usize {
        self.0 & !TAG
    }
}
