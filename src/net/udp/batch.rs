//! Batched UDP syscalls and socket setup: the only syscall-level code of the data channel.
//!
//! On Linux [`RecvBatch::recv`] is one `recvmmsg(2)` and [`SendBatch::flush`] one `sendmmsg(2)` per up to
//! [`MAX_BATCH`] datagrams, on a non-blocking `mio::net::UdpSocket`, inside its `try_io` so mio's readiness
//! tracking stays correct. Elsewhere the same types fall back to a `recv_from`/`send_to` loop. All buffers are
//! allocated once in `new` and reused; a call allocates nothing.
//!
//! The invariant a reader must not break: **every pointer handed to the kernel points into a buffer owned by the
//! batch and borrowed for the whole call, with the length of that buffer.** The `mmsghdr`/`iovec` arrays live on
//! the stack of the call that uses them and are rebuilt each time, so the batch types hold no raw pointers (they
//! are `Send` without an `unsafe impl`) and nothing the kernel saw can dangle afterwards.

use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// Bytes per datagram slot: an Ethernet MTU, comfortably above [`super::MAX_DATAGRAM_BYTES`], so an oversized
/// datagram is still seen whole enough to be rejected as too large rather than silently truncated into range.
pub const SLOT_BYTES: usize = 1500;

/// Largest batch one syscall handles (and the capacity of a batch).
pub const MAX_BATCH: usize = 64;

/// Default batch size for the io threads.
pub const DEFAULT_BATCH: usize = 32;

/// Creates a non-blocking UDP socket bound to `addr` with `SO_REUSEPORT` (so every io thread can bind the same
/// port and the kernel spreads datagrams over them) and `SO_RCVBUF`/`SO_SNDBUF` of `buffer_bytes` (the kernel
/// may cap them at `net.core.rmem_max`/`wmem_max`; see [`socket_buffer_sizes`]).
pub fn bind_reuseport(addr: SocketAddr, buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))))]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if buffer_bytes > 0 {
        socket.set_recv_buffer_size(buffer_bytes)?;
        socket.set_send_buffer_size(buffer_bytes)?;
    }
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// The socket's actual (receive, send) buffer sizes as the kernel reports them (Linux reports double the
/// requested value, capped by the sysctl maximum). Log it at start so a capped buffer is visible.
pub fn socket_buffer_sizes(socket: &UdpSocket) -> io::Result<(usize, usize)> {
    let socket = SockRef::from(socket);
    Ok((socket.recv_buffer_size()?, socket.send_buffer_size()?))
}

/// Preallocated receive buffers for up to [`MAX_BATCH`] datagrams.
pub struct RecvBatch {
    slots: Box<[u8]>,
    lens: Box<[usize]>,
    sources: Box<[Option<SocketAddr>]>,
    capacity: usize,
    received: usize,
}

impl RecvBatch {
    /// A batch of `capacity` slots of [`SLOT_BYTES`] (clamped to `1..=MAX_BATCH`).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_BATCH);
        Self {
            slots: vec![0; capacity * SLOT_BYTES].into_boxed_slice(),
            lens: vec![0; capacity].into_boxed_slice(),
            sources: vec![None; capacity].into_boxed_slice(),
            capacity,
            received: 0,
        }
    }

    /// How many datagrams one call can receive.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Datagrams held from the last successful [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.received
    }

    /// Whether the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Receives up to `capacity` datagrams, replacing the previous contents. `Ok(n)` with `n >= 1`, or
    /// `Err(WouldBlock)` when nothing is waiting (re-arm and poll). `Interrupted` is retried here.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received = 0;
        let n = socket.try_io(|| self.recv_inner(socket))?;
        self.received = n;
        Ok(n)
    }

    /// The `i`-th received datagram and its source. Datagrams whose source is not an IP address (impossible on
    /// an inet socket) read as `None`.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.received {
            return None;
        }
        let src = self.sources[i]?;
        Some((src, &self.slots[i * SLOT_BYTES..i * SLOT_BYTES + self.lens[i]]))
    }

    /// The received datagrams, mutable so they can be decrypted in place (and a reply written over them).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SocketAddr, &mut [u8])> + '_ {
        let received = self.received;
        self.slots
            .chunks_exact_mut(SLOT_BYTES)
            .zip(self.lens.iter().zip(self.sources.iter()))
            .take(received)
            .filter_map(|(slot, (&len, src))| Some(((*src)?, &mut slot[..len])))
    }

    #[cfg(target_os = "linux")]
    fn recv_inner(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;

        let capacity = self.capacity;
        let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_BATCH];
        // SAFETY: `sockaddr_storage` is a plain C struct for which all-zero bytes are a valid value.
        let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: `mmsghdr` is a plain C struct (integers and raw pointers); all-zero is a valid value (null
        // pointers, zero lengths), and every field the kernel reads is set below.
        let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for (i, ((slot, iov), (name, header))) in self
            .slots
            .chunks_exact_mut(SLOT_BYTES)
            .zip(iovecs.iter_mut())
            .zip(names.iter_mut().zip(headers.iter_mut()))
            .take(capacity)
            .enumerate()
        {
            debug_assert!(i < capacity);
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = slot.len();
            header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        let received = loop {
            // SAFETY: `headers[..capacity]` are initialised above; each points at one iovec describing a distinct
            // `SLOT_BYTES` slot of `self.slots` and at one `sockaddr_storage` with its true size, all of which
            // outlive this call and are not otherwise borrowed during it. `capacity <= MAX_BATCH` is the array
            // length. A null timeout is allowed; the socket is non-blocking so the call never waits.
            let rc = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    capacity as libc::c_uint,
                    libc::MSG_DONTWAIT as _,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        debug_assert!(received <= capacity);
        for i in 0..received.min(capacity) {
            let header = &headers[i];
            // A truncated datagram (MSG_TRUNC) reports its true length only up to the slot; it is larger than
            // MAX_DATAGRAM_BYTES either way and will be rejected as too large.
            self.lens[i] = (header.msg_len as usize).min(SLOT_BYTES);
            // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes into `names[i]`, whose family
            // field matches its contents; `msg_namelen` never exceeds the storage size we passed.
            let addr = unsafe { SockAddr::new(names[i], header.msg_hdr.msg_namelen) };
            self.sources[i] = addr.as_socket();
        }
        Ok(received)
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_inner(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut received = 0;
        while received < self.capacity {
            let slot = &mut self.slots[received * SLOT_BYTES..(received + 1) * SLOT_BYTES];
            match socket.recv_from(slot) {
                Ok((n, src)) => {
                    self.lens[received] = n;
                    self.sources[received] = Some(src);
                    received += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if received > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(received)
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("capacity", &self.capacity).field("received", &self.received).finish()
    }
}

/// What one [`SendBatch::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams dropped because the kernel refused them (e.g. unreachable network); UDP is unreliable, so the
    /// batch moves on instead of blocking the queue behind one bad destination.
    pub dropped: usize,
    /// The kind of the last refusal, for a log line or metric.
    pub last_error: Option<io::ErrorKind>,
}

/// Preallocated send buffers for up to [`MAX_BATCH`] datagrams, flushed with one `sendmmsg` per batch.
pub struct SendBatch {
    slots: Box<[u8]>,
    lens: Vec<usize>,
    destinations: Vec<SockAddr>,
    capacity: usize,
    /// Index of the first datagram not yet sent (a flush can stop at `WouldBlock` midway).
    head: usize,
}

impl SendBatch {
    /// A batch of `capacity` slots of [`SLOT_BYTES`] (clamped to `1..=MAX_BATCH`).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_BATCH);
        Self {
            slots: vec![0; capacity * SLOT_BYTES].into_boxed_slice(),
            lens: Vec::with_capacity(capacity),
            destinations: Vec::with_capacity(capacity),
            capacity,
            head: 0,
        }
    }

    /// Datagrams queued and not yet sent.
    pub fn len(&self) -> usize {
        self.lens.len() - self.head
    }

    /// Whether nothing is waiting to be sent (no need for `WRITABLE` interest).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether no slot is free: flush before queueing more.
    pub fn is_full(&self) -> bool {
        self.lens.len() == self.capacity
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.lens.clear();
        self.destinations.clear();
        self.head = 0;
    }

    /// Queues a copy of `datagram` for `dst`. Returns `false` (queueing nothing) when the batch is full or the
    /// datagram is longer than [`SLOT_BYTES`].
    pub fn push(&mut self, dst: SocketAddr, datagram: &[u8]) -> bool {
        if datagram.len() > SLOT_BYTES {
            return false;
        }
        self.push_with(|slot| {
            slot[..datagram.len()].copy_from_slice(datagram);
            Ok::<_, std::convert::Infallible>((datagram.len(), dst))
        })
        .unwrap_or(false)
    }

    /// Lets `fill` write a datagram straight into the next free slot (e.g. `|buf| table.seal_for(id, &msg, buf)`)
    /// and queues it for the address it returns. `Ok(false)`: the batch is full and `fill` was not called.
    pub fn push_with<E>(&mut self, fill: impl FnOnce(&mut [u8]) -> Result<(usize, SocketAddr), E>) -> Result<bool, E> {
        if self.is_full() {
            return Ok(false);
        }
        let index = self.lens.len();
        let slot = &mut self.slots[index * SLOT_BYTES..(index + 1) * SLOT_BYTES];
        let (len, dst) = fill(slot)?;
        self.lens.push(len.min(SLOT_BYTES));
        self.destinations.push(SockAddr::from(dst));
        Ok(true)
    }

    /// Sends what is queued, in order. Stops at `WouldBlock` with the rest still queued (register `WRITABLE`
    /// and flush again); when everything is sent the batch is empty and ready for reuse.
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut flushed = Flushed::default();
        while !self.is_empty() {
            match socket.try_io(|| self.send_some(socket)) {
                Ok(n) => {
                    self.head += n;
                    flushed.sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The first unsent datagram was refused; skip it so one bad destination cannot wedge the batch.
                    self.head += 1;
                    flushed.dropped += 1;
                    flushed.last_error = Some(e.kind());
                }
            }
        }
        if self.is_empty() {
            self.clear();
        }
        flushed
    }

    #[cfg(target_os = "linux")]
    fn send_some(&self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;

        let pending = self.lens.len() - self.head;
        let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_BATCH];
        // SAFETY: `mmsghdr` is a plain C struct (integers and raw pointers); all-zero is a valid value, and every
        // field the kernel reads is set below.
        let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for (i, (iov, header)) in iovecs.iter_mut().zip(headers.iter_mut()).take(pending).enumerate() {
            let index = self.head + i;
            let start = index * SLOT_BYTES;
            let slot = &self.slots[start..start + self.lens[index]];
            let dst = &self.destinations[index];
            // The kernel only reads through these pointers (sendmmsg does not write the payload or the name);
            // the `*mut` casts are what the C struct types require.
            iov.iov_base = slot.as_ptr() as *mut libc::c_void;
            iov.iov_len = slot.len();
            header.msg_hdr.msg_name = dst.as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = dst.len();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        loop {
            // SAFETY: `headers[..pending]` (pending <= capacity <= MAX_BATCH) each point at one iovec describing
            // an initialised, queued slot of `self.slots` with its length, and at a `SockAddr` of
            // `self.destinations` with its true length; all are borrowed from `self` for the whole call.
            let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), pending as libc::c_uint, 0) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_some(&self, socket: &UdpSocket) -> io::Result<usize> {
        let mut sent = 0;
        for index in self.head..self.lens.len() {
            let start = index * SLOT_BYTES;
            let dst = self.destinations[index].as_socket().ok_or(io::ErrorKind::InvalidInput)?;
            match socket.send_to(&self.slots[start..start + self.lens[index]], dst) {
                Ok(_) => sent += 1,
                // Report what went out; the failing datagram is retried (and reported) by the next call.
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").field("capacity", &self.capacity).field("queued", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn loopback_pair() -> (UdpSocket, UdpSocket) {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let b = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        (a, b)
    }

    /// Polls `batch.recv` until `want` datagrams arrived or a second passed (loopback delivery is immediate, but
    /// the test must not depend on it).
    fn recv_at_least(batch: &mut RecvBatch, socket: &UdpSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            match batch.recv(socket) {
                Ok(_) => got.extend(batch.iter_mut().map(|(src, d)| (src, d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        got
    }

    #[test]
    fn batched_send_and_receive_deliver_every_datagram_in_order_with_its_source() {
        let (a, b) = loopback_pair();
        let to = b.local_addr().unwrap();
        let mut send = SendBatch::new(DEFAULT_BATCH);
        for i in 0..DEFAULT_BATCH {
            assert!(send.push(to, &[i as u8; 100]));
        }
        assert!(send.is_full());
        assert!(!send.push(to, b"no room"));
        let flushed = send.flush(&a);
        assert_eq!(flushed, Flushed { sent: DEFAULT_BATCH, dropped: 0, last_error: None });
        assert!(send.is_empty() && !send.is_full());

        let mut recv = RecvBatch::new(DEFAULT_BATCH);
        let got = recv_at_least(&mut recv, &b, DEFAULT_BATCH);
        assert_eq!(got.len(), DEFAULT_BATCH);
        for (i, (src, payload)) in got.iter().enumerate() {
            assert_eq!(*src, a.local_addr().unwrap());
            assert_eq!(payload, &vec![i as u8; 100]);
        }
    }

    #[test]
    fn empty_socket_reports_would_block() {
        let (_a, b) = loopback_pair();
        let mut recv = RecvBatch::new(4);
        assert_eq!(recv.recv(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(recv.is_empty());
    }

    #[test]
    fn datagram_larger_than_the_protocol_maximum_arrives_too_large_not_in_range() {
        let (a, b) = loopback_pair();
        a.send_to(&[7u8; 4000], b.local_addr().unwrap()).unwrap();
        let mut recv = RecvBatch::new(2);
        let got = recv_at_least(&mut recv, &b, 1);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.len() > super::super::MAX_DATAGRAM_BYTES);
    }

    #[test]
    fn push_with_writes_in_place_and_propagates_errors() {
        let mut send = SendBatch::new(2);
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(send.push_with(|buf| -> Result<_, ()> { Ok((buf.len().min(3), dst)) }), Ok(true));
        assert_eq!(send.push_with(|_| -> Result<(usize, SocketAddr), &str> { Err("seal failed") }), Err("seal failed"));
        assert_eq!(send.len(), 1);
        send.clear();
        assert!(send.is_empty());
    }

    #[test]
    fn reuseport_lets_two_sockets_share_a_port() {
        let first = bind_reuseport("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_reuseport(addr, 0).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        let (recv_buf, send_buf) = socket_buffer_sizes(&first).unwrap();
        assert!(recv_buf > 0 && send_buf > 0);
    }

    #[test]
    fn requested_buffer_size_is_applied() {
        let socket = bind_reuseport("127.0.0.1:0".parse().unwrap(), 64 * 1024).unwrap();
        let (recv_buf, _) = socket_buffer_sizes(&socket).unwrap();
        // Linux doubles the request (bookkeeping overhead); other systems report it as is.
        assert!(recv_buf >= 64 * 1024, "{recv_buf}");
    }
}
