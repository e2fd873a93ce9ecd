//! The bare intrusive Vyukov MPSC queue over raw [`Node`]s (1024cores, "intrusive MPSC node-based queue").
//!
//! This layer knows nothing about values, pools or handles: it links and unlinks nodes. The safe API in the parent
//! module uses two kinds of instances of it: the message queue (nodes carry a value) and each producer's return
//! queue (nodes are empty and waiting to be reused).
//!
//! Invariants a reader must not break:
//! - a node is linked into at most one queue at a time, and is pushed only by a thread that owns it exclusively;
//! - `pop` is called by one thread at a time (the single consumer of that instance);
//! - a node returned by `pop` is no longer referenced by the queue and belongs to the caller;
//! - the stub node is owned by the queue and is never returned by `pop`.

use core::ptr::{self, NonNull};

use crate::sync::{AtomicPtr, Ordering, UnsafeCell};

/// A queue node. `value` is initialised exactly while the node sits in the message queue (or in a producer's
/// private `Chain`). The pool a node belongs to is found from its address (see `slab`).
pub(crate) struct Node<T> {
    /// Next node towards the producers' end; null while this node is the newest one.
    pub(crate) next: AtomicPtr<Node<T>>,
    /// The message; see the parent module for who may touch it when.
    pub(crate) value: UnsafeCell<core::mem::MaybeUninit<T>>,
}

impl<T> Node<T> {
    pub(crate) fn new() -> Self {
        Self { next: AtomicPtr::new(ptr::null_mut()), value: UnsafeCell::new(core::mem::MaybeUninit::uninit()) }
    }
}

/// What [`RawQueue::pop`] saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RawPop<T> {
    /// A node, now owned by the caller.
    Node(NonNull<Node<T>>),
    /// Nothing linked and no push in flight.
    Empty,
    /// A producer has swapped itself in as the newest node but has not linked it yet; retry later.
    Inconsistent,
}

/// Intrusive Vyukov MPSC queue with a stub node.
///
/// `tail` is where producers swap new nodes in (Vyukov's `head`); `head` is the consumer's cursor (Vyukov's
/// `tail`), touched only by the consumer. Both sit on their own cache line so producers hammering `tail` do not
/// invalidate the consumer's cursor.
pub(crate) struct RawQueue<T> {
    /// Newest node; producers `swap` it.
    tail: crossbeam_utils::CachePadded<AtomicPtr<Node<T>>>,
    /// Oldest node (possibly the stub); consumer-private.
    head: crossbeam_utils::CachePadded<UnsafeCell<*mut Node<T>>>,
    /// The stub, boxed so the queue itself may move. Owned by the queue, freed in `Drop`.
    stub: NonNull<Node<T>>,
}

impl<T> RawQueue<T> {
    /// An empty queue (allocates its stub).
    pub(crate) fn new() -> Self {
        let stub = NonNull::from(Box::leak(Box::new(Node::new())));
        Self {
            tail: crossbeam_utils::CachePadded::new(AtomicPtr::new(stub.as_ptr())),
            head: crossbeam_utils::CachePadded::new(UnsafeCell::new(stub.as_ptr())),
            stub,
        }
    }

    /// Publishes the privately linked chain `first ..= last` with one swap and one store.
    ///
    /// # Safety
    /// - `first ..= last` are valid nodes owned exclusively by the caller, linked through `next` (Relaxed stores
    ///   are enough: this publication orders them), and not linked into any queue;
    /// - every node of the chain stays valid until the consumer of this queue has popped it.
    #[inline]
    pub(crate) unsafe fn push_chain(&self, first: NonNull<Node<T>>, last: NonNull<Node<T>>) {
        // SAFETY: forwarded to the caller.
        let prev = unsafe { self.claim_tail(last) };
        // --- the "mid-push" window: the consumer may see `tail` moved while `prev.next` is still null. ---
        // SAFETY: `prev` came from `claim_tail` and we link it exactly once.
        unsafe { Self::link(prev, first) };
    }

    /// First half of a push: makes `last` the newest node and returns the previous newest node, which must then
    /// be linked to the chain's first node with [`RawQueue::link`]. Split out so tests can hold the mid-push
    /// window open deterministically.
    ///
    /// # Safety
    /// As [`RawQueue::push_chain`]; additionally the caller must call `link(prev, first)` exactly once afterwards
    /// (until then the consumer sees `Inconsistent`).
    #[inline]
    pub(crate) unsafe fn claim_tail(&self, last: NonNull<Node<T>>) -> NonNull<Node<T>> {
        // SAFETY: the caller owns `last` exclusively until the swap below publishes it.
        unsafe { last.as_ref() }.next.store(ptr::null_mut(), Ordering::Relaxed);
        // AcqRel. Release: the next swapper gets `last` back and will write `last.next`; it must not be overwritten
        // by our null store above, so that store must happen-before its link. Acquire: symmetrically, we are about
        // to write `prev.next`, and the null store of whoever published `prev` must happen-before our link.
        let prev = self.tail.swap(last.as_ptr(), Ordering::AcqRel);
        debug_assert!(!prev.is_null(), "queue tail is never null (stub)");
        // SAFETY: the tail is never null: it starts at the stub and only ever receives non-null nodes.
        unsafe { NonNull::new_unchecked(prev) }
    }

    /// Second half of a push: links `prev` (returned by [`RawQueue::claim_tail`]) to `first`, which publishes the
    /// chain to the consumer.
    ///
    /// # Safety
    /// `prev` was returned by `claim_tail` on this queue and is linked exactly once, to the chain's first node.
    #[inline]
    pub(crate) unsafe fn link(prev: NonNull<Node<T>>, first: NonNull<Node<T>>) {
        debug_assert!(
            // SAFETY: `prev` is valid, see below.
            unsafe { prev.as_ref() }.next.load(Ordering::Relaxed).is_null(),
            "a node is linked once"
        );
        // SAFETY: `prev` was the newest node; it cannot be popped or recycled before its `next` is non-null, which
        // only we will write, so it is still valid.
        // Release: publishes the chain's values and links to the consumer's Acquire load of `next`.
        unsafe { prev.as_ref() }.next.store(first.as_ptr(), Ordering::Release);
    }

    /// Pushes one node: one swap and one store.
    ///
    /// # Safety
    /// Same as [`RawQueue::push_chain`] with `first == last == node`.
    #[inline]
    pub(crate) unsafe fn push(&self, node: NonNull<Node<T>>) {
        // SAFETY: forwarded to the caller.
        unsafe { self.push_chain(node, node) }
    }

    /// Takes the oldest node.
    ///
    /// # Safety
    /// Only one thread may call `pop` on a given queue at a time (callers guarantee it by type: `&mut Consumer`,
    /// or the owning, `!Sync` producer handle of a return queue).
    #[inline]
    pub(crate) unsafe fn pop(&self) -> RawPop<T> {
        let stub = self.stub.as_ptr();
        // SAFETY: the cursor is only accessed by the single consumer (this caller).
        let mut head = self.head.with(|p| unsafe { *p });
        // SAFETY: `head` is a node of this queue (the stub or a pushed, not yet returned node), kept alive by the
        // push contract; only the consumer unlinks nodes.
        // Acquire: pairs with the Release link store in `push_chain`, making the next node's value visible.
        let mut next = unsafe { &*head }.next.load(Ordering::Acquire);
        if head == stub {
            if next.is_null() {
                // Acquire is not needed for data here (pointer comparison only); Relaxed would do, but keeping it
                // Acquire costs nothing on x86 and keeps the argument simple.
                return if self.tail.load(Ordering::Acquire) == stub { RawPop::Empty } else { RawPop::Inconsistent };
            }
            // Skip the stub.
            self.set_head(next);
            head = next;
            // SAFETY: as above; `next` was linked by a completed push.
            next = unsafe { &*head }.next.load(Ordering::Acquire);
        }
        if !next.is_null() {
            self.set_head(next);
            debug_assert_ne!(head, stub);
            // SAFETY: `head` is a pushed node (not null: the queue never links null).
            return RawPop::Node(unsafe { NonNull::new_unchecked(head) });
        }
        // `head` is the last linked node. If a producer already swapped past it, wait for its link.
        if self.tail.load(Ordering::Acquire) != head {
            return RawPop::Inconsistent;
        }
        // `head` is the newest node: push the stub behind it so `head` can be handed out.
        // SAFETY: the stub is not linked (head != stub and the stub is pushed only here, by the single consumer,
        // after having been skipped) and lives as long as the queue.
        unsafe { self.push(self.stub) };
        // SAFETY: as above.
        next = unsafe { &*head }.next.load(Ordering::Acquire);
        if !next.is_null() {
            self.set_head(next);
            // SAFETY: `head` is a pushed, non-null node.
            return RawPop::Node(unsafe { NonNull::new_unchecked(head) });
        }
        // Another producer swapped in between our `tail` load and our stub push and has not linked yet.
        RawPop::Inconsistent
    }

    #[inline]
    fn set_head(&self, node: *mut Node<T>) {
        // SAFETY: only the single consumer (our caller) accesses the cursor.
        self.head.with_mut(|p| unsafe { *p = node });
    }

    /// Calls `f` on every node still linked, oldest first, skipping the stub.
    ///
    /// # Safety
    /// Requires exclusive access to the whole queue with every push completed (no producer or consumer alive);
    /// `f` must not free a node before this returns from it (the link is read first, so freeing is in fact fine
    /// as long as `f` does not touch the queue).
    pub(crate) unsafe fn drain_quiescent(&self, mut f: impl FnMut(NonNull<Node<T>>)) {
        let stub = self.stub.as_ptr();
        // SAFETY: exclusive access (caller contract).
        let mut cur = self.head.with(|p| unsafe { *p });
        while !cur.is_null() {
            // SAFETY: `cur` is linked, so valid; exclusive access means no concurrent writer.
            let next = unsafe { &*cur }.next.load(Ordering::Acquire);
            if cur != stub {
                // SAFETY: non-null, linked node.
                f(unsafe { NonNull::new_unchecked(cur) });
            }
            cur = next;
        }
    }
}

impl<T> Drop for RawQueue<T> {
    fn drop(&mut self) {
        // SAFETY: the stub was leaked from a Box in `new` and is freed only here. Other nodes are owned by pools.
        drop(unsafe { Box::from_raw(self.stub.as_ptr()) });
    }
}
