//! Storage for weights that decoding streams: one buffer per block, on huge pages.
//!
//! A decoded token reads every weight once. With 4 KiB pages that is a TLB miss every 4 KiB, and
//! each miss is a page walk (a nested one on a virtual machine) that the prefetchers cannot hide.
//! On Linux [`HugeBuf`] is aligned to 2 MiB and asks for transparent huge pages with
//! `madvise(MADV_HUGEPAGE)`, which works where the system's setting is `madvise` (the usual
//! default) or `always`. Elsewhere it is an ordinary aligned allocation. Only where the weights lie
//! changes, never a value: the golden hash is the same either way.

use std::alloc::Layout;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

/// The huge page size asked for (x86-64 and AArch64 with 4 KiB base pages).
pub const HUGE: usize = 2 << 20;

/// The integer types weights are stored in.
pub trait Plain: Copy + Default + PartialEq + Send + Sync + 'static {}
impl Plain for i8 {}
impl Plain for u16 {}
impl Plain for u64 {}

/// A 2 MiB-aligned buffer of `len` values that Linux is asked to back with huge pages.
pub struct HugeBuf<T: Plain> {
    ptr: NonNull<T>,
    len: usize,
    layout: Layout,
}

// SAFETY: a HugeBuf owns its memory like a Box<[T]> does, and T is Send + Sync.
unsafe impl<T: Plain> Send for HugeBuf<T> {}
// SAFETY: shared access only reads, as through &[T].
unsafe impl<T: Plain> Sync for HugeBuf<T> {}

impl<T: Plain> HugeBuf<T> {
    /// Room for `len` values, advised but not yet touched; `None` if the allocation fails.
    /// The caller must write all `len` values before anything reads them.
    fn uninit(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(size_of::<T>())?.max(1).next_multiple_of(HUGE);
        let layout = Layout::from_size_align(bytes, HUGE).ok()?;
        let ptr = NonNull::new(map(layout)?.cast::<T>())?;
        Some(Self { ptr, len, layout })
    }

    /// `len` values `f(0), f(1), ...`; `None` if the allocation fails.
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> T) -> Option<Self> {
        let buf = Self::uninit(len)?;
        for i in 0..len {
            // SAFETY: in bounds; each value is written once before anything reads the buffer.
            unsafe { buf.ptr.as_ptr().add(i).write(f(i)) }
        }
        Some(buf)
    }

    /// Copy `values` to position `at`.
    fn write(&mut self, at: usize, values: &[T]) {
        assert!(at + values.len() <= self.len, "write past the end of a weight buffer");
        // SAFETY: in bounds (checked above), and a fresh allocation never overlaps `values`.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.as_ptr().add(at), values.len()) }
    }
}

impl<T: Plain> Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is valid and initialized for `len` values while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        unmap(self.ptr.as_ptr().cast(), self.layout);
    }
}

/// Fresh memory for `layout`, advised to be huge pages before anything touches it (the first
/// touch of each 2 MiB decides its page size). Mapped directly rather than taken from malloc,
/// whose recycled memory would already sit on 4 KiB pages.
#[cfg(target_os = "linux")]
fn map(layout: Layout) -> Option<*mut u8> {
    let (bytes, align) = (layout.size(), layout.align());
    let span = bytes.checked_add(align)?;
    let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
    // SAFETY: a new anonymous private mapping of `span` bytes, which nothing else refers to.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), span, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(align);
    let tail = start + span - (aligned + bytes);
    // SAFETY: the two trimmed ranges lie inside the mapping made above and are never used. The
    // advice changes no contents; it fails harmlessly (EINVAL) where transparent huge pages are
    // off, and then 4 KiB pages serve.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        if tail > 0 {
            libc::munmap((aligned + bytes) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
    }
    Some(aligned as *mut u8)
}

#[cfg(target_os = "linux")]
fn unmap(ptr: *mut u8, layout: Layout) {
    // SAFETY: exactly the range `map` left mapped.
    unsafe {
        libc::munmap(ptr.cast(), layout.size());
    }
}

#[cfg(not(target_os = "linux"))]
fn map(layout: Layout) -> Option<*mut u8> {
    // SAFETY: the layout has a non-zero size.
    let raw = unsafe { std::alloc::alloc(layout) };
    (!raw.is_null()).then_some(raw)
}

#[cfg(not(target_os = "linux"))]
fn unmap(ptr: *mut u8, layout: Layout) {
    // SAFETY: allocated by `map` with this very layout.
    unsafe { std::alloc::dealloc(ptr, layout) }
}

/// Hand the memory freed by [`pack`] back to the system.
///
/// glibc keeps freed blocks of a few hundred KiB in its heap rather than unmapping them, so
/// without this the loose copies of the weights would stay resident next to the packed ones.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A matrix's values: its own vector, or its part of a [`HugeBuf`] it shares with the rest of its block.
#[derive(Clone)]
pub enum Store<T: Plain> {
    /// Owned, as built.
    Own(Vec<T>),
    /// `len` values from `at` in a shared buffer.
    Part(Arc<HugeBuf<T>>, usize, usize),
}

impl<T: Plain> Deref for Store<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Store::Own(v) => v,
            Store::Part(b, at, len) => &b[*at..*at + *len],
        }
    }
}

impl<T: Plain> PartialEq for Store<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Plain> std::fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} values", self.len())
    }
}

/// Move every store into one shared [`HugeBuf`], in order. Each old buffer is freed as soon as it
/// is copied, so packing needs hardly more memory than the weights. Left as they are if the
/// allocation fails.
pub fn pack<T: Plain>(stores: &mut [&mut Store<T>]) {
    let len: usize = stores.iter().map(|s| s.len()).sum();
    let Some(mut buf) = HugeBuf::uninit(len) else {
        return;
    };
    let mut spans = Vec::with_capacity(stores.len());
    let mut at = 0;
    for s in stores.iter_mut() {
        buf.write(at, s);
        spans.push((at, s.len()));
        at += s.len();
        **s = Store::Own(Vec::new());
    }
    // Every one of the `len` values is written now: `buf` may be read.
    let buf = Arc::new(buf);
    for (s, (at, n)) in stores.iter_mut().zip(spans) {
        **s = Store::Part(buf.clone(), at, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_stores_keep_their_values_and_share_one_aligned_buffer() {
        let mut a = Store::Own(vec![1i8, -2, 3]);
        let mut b = Store::Own(Vec::new());
        let n = 5000;
        let mut c = Store::Own((0..n).map(|i| (i % 251) as i8).collect());
        let (va, vc) = (a.to_vec(), c.to_vec());
        pack(&mut [&mut a, &mut b, &mut c]);
        assert_eq!((&*a, &*b, &*c), (&va[..], &[][..], &vc[..]));
        match (&a, &c) {
            (Store::Part(x, 0, 3), Store::Part(y, 3, m)) if *m == n => {
                assert!(Arc::ptr_eq(x, y));
                assert_eq!(x.as_ptr() as usize % HUGE, 0);
            }
            other => panic!("not packed: {other:?}"),
        }
    }

    #[test]
    fn a_buffer_from_a_function_holds_its_values() {
        let b = HugeBuf::from_fn(1000, |i| (i * 3) as u64).expect("allocation");
        assert_eq!(b.len(), 1000);
        assert!(b.iter().enumerate().all(|(i, &v)| v == (i * 3) as u64));
    }
}
