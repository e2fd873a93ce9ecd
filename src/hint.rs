//! A CPU hint `std` does not offer on stable Rust: prefetching a cache line. Fenced here (one of the few modules
//! allowed `unsafe`) so its safety argument sits next to it.

/// Cache line size assumed by [`prefetch_slice`] (x86-64 and most AArch64 cores).
const LINE: usize = 64;

/// Asks the CPU to start loading the cache line at `ptr` into all its cache levels, without waiting for it. A
/// hint: it never faults (any address is allowed, a bad one is ignored) and changes no result, only when memory
/// is read. Where the CPU has no such instruction (other architectures here) it does nothing.
#[inline(always)]
fn prefetch_ptr(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is `unsafe` only for its `sse` target feature, which every x86-64 CPU has (it is part
    // of the architecture's baseline, always enabled for this target); PREFETCHT0 reads nothing architecturally,
    // cannot fault on any address, and `ptr` is not dereferenced.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Prefetches the first cache line of `value`.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    prefetch_ptr((value as *const T).cast::<u8>());
}

/// Prefetches every cache line `values` spans.
#[inline(always)]
pub fn prefetch_slice<T>(values: &[T]) {
    let start = values.as_ptr().cast::<u8>();
    let bytes = std::mem::size_of_val(values);
    if bytes == 0 {
        return;
    }
    // The lines from the one holding the first byte to the one holding the last.
    let first = start as usize / LINE;
    let last = (start as usize + bytes - 1) / LINE;
    for line in 0..=last - first {
        prefetch_ptr(start.wrapping_add(line * LINE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_changes_nothing_and_accepts_any_slice() {
        let v: Vec<u64> = (0..1000).collect();
        prefetch(&v[3]);
        prefetch_slice(&v[..]);
        prefetch_slice(&v[5..5]);
        prefetch_slice::<u64>(&[]);
        prefetch_slice(&v[999..]);
        assert_eq!(v.iter().sum::<u64>(), 999 * 1000 / 2);
    }
}
