//! Node slabs: fixed-size blocks aligned to their own size, whose first slot is a header naming the owning pool.
//!
//! A node finds its pool by masking its own address, so nodes carry no `origin` pointer: a one-word message
//! travels in a 16-byte node, four per cache line, which is a third fewer cache-line transfers between the
//! producer and consumer cores than with a 24-byte node.
//!
//! Invariant a reader must not break: every node handed to a queue, except a queue's stub, lives in a slab made
//! here, at a slot index `< Slab::<T>::NODES`; `header` is only ever called on such nodes.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use super::raw::Node;
use super::Pool;

/// First slot of every slab. Written once before any of the slab's nodes is shared, then read-only.
pub(crate) struct SlabHeader<T> {
    /// The pool that owns every node of this slab.
    pub(crate) pool: *const Pool<T>,
    /// The pool's slot in the consumer's pending-return table (a deterministic function of the pool, see
    /// `Pool::id`; loom requires deterministic control flow, so not the address).
    pub(crate) slot: usize,
}

/// Slab geometry for one `T`, computed at compile time.
pub(crate) struct Slab<T>(PhantomData<T>);

#[cfg(not(realm_loom))]
const TARGET_BYTES: usize = 64 * 1024;
#[cfg(not(realm_loom))]
const MIN_NODES: usize = 32;
#[cfg(not(realm_loom))]
const MAX_NODES: usize = usize::MAX;
// Under loom, one node per slab keeps models small and makes reuse observable.
#[cfg(realm_loom)]
const TARGET_BYTES: usize = 0;
#[cfg(realm_loom)]
const MIN_NODES: usize = 1;
#[cfg(realm_loom)]
const MAX_NODES: usize = 1;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

impl<T> Slab<T> {
    const NODE: usize = core::mem::size_of::<Node<T>>();
    const NODE_ALIGN: usize = core::mem::align_of::<Node<T>>();
    /// Bytes before the first node: the header, alone on its (128-byte, two-line prefetch pair) cache line so
    /// that the consumer's read of it for every recycled node never misses because a neighbouring node is being
    /// written; at least one node slot, so nodes of power-of-two size never straddle cache lines.
    const FIRST: usize = {
        let raw = max(max(core::mem::size_of::<SlabHeader<T>>(), Self::NODE), 128);
        raw.div_ceil(Self::NODE_ALIGN) * Self::NODE_ALIGN
    };
    /// Slab size, which is also its alignment (a power of two).
    pub(crate) const BYTES: usize = {
        let wanted = max(MIN_NODES, TARGET_BYTES.saturating_sub(Self::FIRST) / Self::NODE);
        (Self::FIRST + wanted * Self::NODE).next_power_of_two()
    };
    /// Nodes per slab.
    pub(crate) const NODES: usize = min(MAX_NODES, (Self::BYTES - Self::FIRST) / Self::NODE);

    fn layout() -> Layout {
        match Layout::from_size_align(Self::BYTES, Self::BYTES) {
            Ok(layout) => layout,
            Err(_) => panic!("queue slab layout overflows for this message type"),
        }
    }

    /// Allocates a slab for `pool`, with every node initialised empty and unlinked. Returns the slab's base
    /// (for [`Slab::free`]) and its first node; node `i` is at `first.add(i)` for `i < NODES`.
    pub(crate) fn alloc(pool: *const Pool<T>, slot: usize) -> (NonNull<u8>, NonNull<Node<T>>) {
        let layout = Self::layout();
        // SAFETY: the layout has non-zero size (at least one header and one node).
        let base = unsafe { std::alloc::alloc(layout) };
        let Some(base) = NonNull::new(base) else { std::alloc::handle_alloc_error(layout) };
        debug_assert_eq!(base.as_ptr() as usize % Self::BYTES, 0);
        // SAFETY: the block is `BYTES` long and aligned to `BYTES`, so the header fits at offset 0 (it is no
        // larger than `FIRST`) and node `i < NODES` fits at `FIRST + i * NODE`, suitably aligned (`FIRST` and
        // `NODE` are multiples of the node alignment). We own the fresh block exclusively.
        unsafe {
            base.as_ptr().cast::<SlabHeader<T>>().write(SlabHeader { pool, slot });
            let first = base.as_ptr().add(Self::FIRST).cast::<Node<T>>();
            for i in 0..Self::NODES {
                first.add(i).write(Node::new());
            }
            (base, NonNull::new_unchecked(first))
        }
    }

    /// The header of the slab `node` lives in.
    ///
    /// # Safety
    /// `node` must be a node of a live slab made by [`Slab::alloc`] (not a stub).
    #[inline]
    pub(crate) unsafe fn header<'a>(node: NonNull<Node<T>>) -> &'a SlabHeader<T> {
        let offset = node.as_ptr() as usize & (Self::BYTES - 1);
        debug_assert!(offset >= Self::FIRST && offset < Self::FIRST + Self::NODES * Self::NODE);
        // SAFETY: slabs are `BYTES`-aligned and `BYTES` long, so the address rounded down is the slab base, whose
        // header was written by `alloc` before the node could be shared. Stepping back within the same allocation
        // keeps the pointer's provenance.
        unsafe { &*node.as_ptr().cast::<u8>().sub(offset).cast::<SlabHeader<T>>() }
    }

    /// Frees a slab.
    ///
    /// # Safety
    /// `base` came from [`Slab::alloc`] for this `T`, is freed once, and no node of it is referenced any more and
    /// none holds a live value.
    pub(crate) unsafe fn free(base: NonNull<u8>) {
        // SAFETY: per the contract, the nodes were initialised by `alloc` and are unreferenced; node values are
        // `MaybeUninit`, so dropping a node drops only its atomics/cells. Then the block goes back with its layout.
        unsafe {
            let first = base.as_ptr().add(Self::FIRST).cast::<Node<T>>();
            for i in 0..Self::NODES {
                ptr::drop_in_place(first.add(i));
            }
            std::alloc::dealloc(base.as_ptr(), Self::layout());
        }
    }
}
