//! UDP data channel: batched `recvmmsg`/`sendmmsg` ([`RecvBatch`]/[`SendBatch`]) against a plain
//! `recv_from`/`send_to` loop, on loopback, in the same run, for 1200-byte (a full snapshot) and 100-byte (an
//! input) datagrams.
//!
//! Scenarios (plain and batched rounds are interleaved so machine noise hits both alike):
//! * `recv` — the receive side alone: the socket buffer is filled (untimed), then drained until `WouldBlock`
//!   (timed), as an io thread does after a readiness event.
//! * `send` — the send side alone: a burst of datagrams to a socket nobody reads (the kernel does the same work
//!   per datagram in both modes, so the difference is the syscall path).
//! * `stream` — a sender thread blasts with `sendmmsg` while the receiver (plain or batched) runs a mio poll loop.
//!   On a 2-core machine the sender is often the bottleneck, so the receiver's packets per CPU-second is shown too.
//!
//! Packets/s are wall-clock; "cpu" columns divide by the measuring thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! which is less disturbed by other processes on a shared machine. Run with `cargo bench --bench udp`
//! (`REALM_UDP_BENCH_SECS` sets the timed seconds per mode and scenario, default 1). Results are printed and
//! written to `target/bench-results/udp.json`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use realm::net::udp::batch::{bind_reuseport, socket_buffer_sizes, RecvBatch, SendBatch, DEFAULT_BATCH, SLOT_BYTES};

const SOCKET_BUFFER: usize = 4 << 20;
const SEND_BURST: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Batched,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    packets: u64,
    wall: Duration,
    cpu: Duration,
}

impl Tally {
    fn add(&mut self, packets: u64, wall: Duration, cpu: Duration) {
        self.packets += packets;
        self.wall += wall;
        self.cpu += cpu;
    }
    fn pps(&self) -> f64 {
        self.packets as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn cpu_pps(&self) -> f64 {
        self.packets as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

struct Row {
    scenario: &'static str,
    size: usize,
    plain: Tally,
    batched: Tally,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.batched.pps() / self.plain.pps().max(1e-9)
    }
    fn cpu_ratio(&self) -> f64 {
        self.batched.cpu_pps() / self.plain.cpu_pps().max(1e-9)
    }
}

/// CPU time consumed by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn socket() -> UdpSocket {
    bind_reuseport("127.0.0.1:0".parse().expect("literal address"), SOCKET_BUFFER).expect("bind loopback")
}

/// Queues `count` copies of `payload` for `to` and sends them with sendmmsg (untimed fill).
fn blast(tx: &UdpSocket, send: &mut SendBatch, to: SocketAddr, payload: &[u8], count: usize) -> u64 {
    let mut sent = 0u64;
    let mut queued = 0;
    while queued < count {
        while queued < count && send.push(to, payload) {
            queued += 1;
        }
        sent += send.flush(tx).sent as u64;
        if !send.is_empty() {
            // Send buffer full: the rest of this burst is not needed.
            send.clear();
        }
    }
    sent
}

fn drain(mode: Mode, rx: &UdpSocket, recv: &mut RecvBatch, buf: &mut [u8]) -> u64 {
    let mut received = 0u64;
    loop {
        let got = match mode {
            Mode::Plain => rx.recv_from(buf).map(|_| 1),
            Mode::Batched => recv.recv(rx),
        };
        match got {
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn bench_recv(size: usize, secs: f64) -> Row {
    let (rx, tx) = (socket(), socket());
    let to = rx.local_addr().expect("local addr");
    let payload = vec![0xA5u8; size];
    let (mut send, mut recv, mut buf) =
        (SendBatch::new(DEFAULT_BATCH), RecvBatch::new(DEFAULT_BATCH), [0u8; SLOT_BYTES]);
    let fill = (SOCKET_BUFFER * 2 / (size + 1024)).max(256);
    let mut tallies = [Tally::default(); 2];
    let target = Duration::from_secs_f64(secs);
    for round in 0.. {
        let mode = if round % 2 == 0 { Mode::Plain } else { Mode::Batched };
        if tallies.iter().all(|t| t.wall >= target) {
            break;
        }
        blast(&tx, &mut send, to, &payload, fill);
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let n = drain(mode, &rx, &mut recv, &mut buf);
        tallies[(round % 2) as usize].add(n, wall.elapsed(), thread_cpu() - cpu);
    }
    Row { scenario: "recv", size, plain: tallies[0], batched: tallies[1] }
}

fn bench_send(size: usize, secs: f64) -> Row {
    let (sink, tx) = (socket(), socket());
    let to = sink.local_addr().expect("local addr");
    let payload = vec![0x5Au8; size];
    let mut send = SendBatch::new(DEFAULT_BATCH);
    let mut tallies = [Tally::default(); 2];
    let target = Duration::from_secs_f64(secs);
    for round in 0u64.. {
        if tallies.iter().all(|t| t.wall >= target) {
            break;
        }
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let sent = if round % 2 == 0 {
            let mut sent = 0u64;
            for _ in 0..SEND_BURST {
                match tx.send_to(&payload, to) {
                    Ok(_) => sent += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("send_to: {e}"),
                }
            }
            sent
        } else {
            let mut sent = 0u64;
            let mut queued = 0;
            while queued < SEND_BURST {
                while queued < SEND_BURST && send.push(to, &payload) {
                    queued += 1;
                }
                sent += send.flush(&tx).sent as u64;
                send.clear();
            }
            sent
        };
        tallies[(round % 2) as usize].add(sent, wall.elapsed(), thread_cpu() - cpu);
    }
    drop(sink);
    Row { scenario: "send", size, plain: tallies[0], batched: tallies[1] }
}

fn stream_once(mode: Mode, size: usize, secs: f64) -> Tally {
    let mut rx = socket();
    let to = rx.local_addr().expect("local addr");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let tx = socket();
            let payload = vec![0x3Cu8; size];
            let mut send = SendBatch::new(DEFAULT_BATCH);
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(blast(&tx, &mut send, to, &payload, DEFAULT_BATCH * 4), Ordering::Relaxed);
            }
        })
    };
    let mut poll = Poll::new().expect("poll");
    poll.registry().register(&mut rx, Token(0), Interest::READABLE).expect("register");
    let mut events = Events::with_capacity(16);
    let (mut recv, mut buf) = (RecvBatch::new(DEFAULT_BATCH), [0u8; SLOT_BYTES]);
    // Warm up, then measure.
    let warm = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm {
        drain(mode, &rx, &mut recv, &mut buf);
        poll.poll(&mut events, Some(Duration::from_millis(10))).expect("poll");
    }
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let end = wall + Duration::from_secs_f64(secs);
    let mut received = 0;
    while Instant::now() < end {
        received += drain(mode, &rx, &mut recv, &mut buf);
        poll.poll(&mut events, Some(Duration::from_millis(10))).expect("poll");
    }
    let mut tally = Tally::default();
    tally.add(received, wall.elapsed(), thread_cpu() - cpu);
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender thread");
    tally
}

fn bench_stream(size: usize, secs: f64) -> Row {
    // Alternate short runs so both modes see the same machine conditions.
    let (mut plain, mut batched) = (Tally::default(), Tally::default());
    for _ in 0..2 {
        let p = stream_once(Mode::Plain, size, secs / 2.0);
        plain.add(p.packets, p.wall, p.cpu);
        let b = stream_once(Mode::Batched, size, secs / 2.0);
        batched.add(b.packets, b.wall, b.cpu);
    }
    Row { scenario: "stream", size, plain, batched }
}

/// Nanoseconds per `recv_from` on an empty non-blocking socket: syscall entry/exit plus the socket lookup and lock,
/// i.e. the part of a per-packet receive that batching can amortise. Per-packet work (dequeue, copy, free) remains.
fn syscall_floor_ns() -> f64 {
    let rx = socket();
    let mut buf = [0u8; SLOT_BYTES];
    let calls = 200_000u32;
    let start = thread_cpu();
    for _ in 0..calls {
        let _ = std::hint::black_box(rx.recv_from(&mut buf));
    }
    (thread_cpu() - start).as_nanos() as f64 / f64::from(calls)
}

fn main() {
    let secs: f64 = std::env::var("REALM_UDP_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let probe = socket();
    let (rcvbuf, sndbuf) = socket_buffer_sizes(&probe).expect("buffer sizes");
    drop(probe);
    println!("udp bench: {secs} s per mode and scenario, batch {DEFAULT_BATCH}, SO_RCVBUF {rcvbuf} SO_SNDBUF {sndbuf}");

    let mut rows = Vec::new();
    for size in [1200usize, 100] {
        rows.push(bench_recv(size, secs));
        rows.push(bench_send(size, secs));
        rows.push(bench_stream(size, secs));
    }

    println!();
    println!(
        "| scenario | bytes | plain pkts/s | batched pkts/s | ratio | plain pkts/cpu-s | batched pkts/cpu-s | cpu ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.2}x |",
            r.scenario,
            r.size,
            r.plain.pps(),
            r.batched.pps(),
            r.ratio(),
            r.plain.cpu_pps(),
            r.batched.cpu_pps(),
            r.cpu_ratio()
        );
    }

    let floor_ns = syscall_floor_ns();
    let plain_recv_ns =
        rows.iter().find(|r| r.scenario == "recv" && r.size == 1200).map_or(0.0, |r| 1e9 / r.plain.cpu_pps().max(1e-9));
    let ceiling = plain_recv_ns / (plain_recv_ns - floor_ns).max(1.0);
    println!();
    println!(
        "syscall floor: {floor_ns:.0} ns per empty recv_from; plain receive: {plain_recv_ns:.0} ns per 1200-byte \
         packet; upper bound if batching removed that whole per-call cost: {ceiling:.2}x (recvmmsg still repeats \
         the msghdr copy and socket lock per message, so the real gain is lower)"
    );

    let target_met = rows.iter().filter(|r| r.scenario != "stream").all(|r| r.ratio() >= 1.5);
    println!();
    println!(
        "target (recv and send, both sizes): batched >= 1.5x plain packets/s -> {}",
        if target_met { "PASS" } else { "FAIL" }
    );

    let json = serde_json::json!({
        "bench": "udp",
        "seconds_per_mode": secs,
        "batch": DEFAULT_BATCH,
        "so_rcvbuf": rcvbuf,
        "so_sndbuf": sndbuf,
        "target_ratio": 1.5,
        "target_met": target_met,
        "syscall_floor_ns": floor_ns,
        "plain_recv_ns_per_packet_1200": plain_recv_ns,
        "batching_ceiling_ratio": ceiling,
        "results": rows.iter().map(|r| serde_json::json!({
            "scenario": r.scenario,
            "bytes": r.size,
            "plain_pps": r.plain.pps(),
            "batched_pps": r.batched.pps(),
            "ratio": r.ratio(),
            "plain_pps_per_cpu_s": r.plain.cpu_pps(),
            "batched_pps_per_cpu_s": r.batched.cpu_pps(),
            "cpu_ratio": r.cpu_ratio(),
            "plain_packets": r.plain.packets,
            "batched_packets": r.batched.packets,
        })).collect::<Vec<_>>(),
    });
    let dir = std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("bench-results");
    std::fs::create_dir_all(&dir).expect("create target/bench-results");
    let path = dir.join("udp.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("serialize")).expect("write udp.json");
    println!("wrote {}", path.display());
}
