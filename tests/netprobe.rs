//! netprobe: the servers and clients of the integration tests, the demo and the benchmarks.
//!
//! `serve` answers every TCP connection with one JSON line saying who answered, on which
//! local address, from which peer, and what getsockopt(SO_ORIGINAL_DST) returned: that is
//! how a test proves where a connection landed. `connect` dials and prints the answer with
//! the client's own view (getpeername/getsockname). `dns` sends one DNS query over UDP, on a
//! connected socket or with sendto(), and prints the answer with the reply's source address
//! (recvfrom) and the socket's getpeername().
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};

fn usage() -> ! {
    eprintln!(
        "usage:\n  netprobe serve --name NAME --listen ADDR:PORT... [--udp ADDR:PORT...] [--close]\n  netprobe connect --to ADDR:PORT [--udp] [--timeout-ms N]\n  netprobe dns --to ADDR:PORT... --name NAME [--sendto] [--timeout-ms N]  (an A query to each, over one UDP socket; [::ffff:a.b.c.d] = dual-stack)\n  netprobe connect-many --to ADDR:PORT... [--repeat N]\n  netprobe connect-hold --to ADDR:PORT        (one exchange per stdin line)\n  netprobe connect-loop --to ADDR:PORT [--interval-ms N]   (connects until stdin closes; one JSON line each, with the time)\n  netprobe rr --to ADDR:PORT --count N      (connect, 1-byte request/response, close; prints latencies in ns)\n  netprobe bulk --to ADDR:PORT --bytes N     (prints MB/s)\n  netprobe pingpong --to ADDR:PORT --count N (one connection, N 1-byte request/responses; latencies in ns)\n  netprobe sink --listen ADDR:PORT [--workers N] [--orig-dst]\n                                             (accepts and discards; 1-byte echo for rr, and a\n                                             1-byte \"q\" is echoed and the sink closes first; N threads accept;\n                                              --orig-dst: asks SO_ORIGINAL_DST of each, as a sidecar)\n  netprobe cps --to ADDR:PORT --threads N --duration-ms D\n                                             (N threads: connect, 1-byte \"q\", read the answer and the\n                                              sink's close, close; prints \"conns errors elapsed_ns\", then\n                                              one latency in ns per connection)\n  netprobe serve ... [--reuseport N]         (N SO_REUSEPORT listeners per address)\n  netprobe hold-accept --listen ADDR:PORT... --wait-ms N [--backlog B] [--idle-ms N]\n                                             (listens, accepts nothing for N ms, then accepts\n                                              every pending connection: one JSON line each)\n  netprobe send-close --to ADDR:PORT --count N [--linger0]\n                                             (connect, send a line, close at once; N times)\n  netprobe reconnect --to ADDR:PORT --then ADDR:PORT\n                                             (one socket: connect, and after it fails connect again)\n  netprobe connect ... [--bind ADDR:PORT]     (bind before connecting)\n  netprobe stream --to ADDR:PORT --bytes N [--how write|sendfile|splice] [--write-size N] [--blocking]\n                                             (sends N bytes of a known pattern (non-blocking writes, or\n                                              sendfile() from a file, or splice() from a pipe), half-closes,\n                                              reads the server's JSON line and N bytes back; prints JSON;\n                                              reads wait in poll() unless --blocking)\n  netprobe stream-server --listen ADDR:PORT [--splice] [--read-size N] [--delay-ms N] [--blocking]\n                        [--close-delay-ms N]\n                                             (per connection: waits, reads to EOF (read() or splice()),\n                                              answers a JSON line — bytes, pattern check, addresses,\n                                              SO_ORIGINAL_DST, TCP_INFO bytes received — then N bytes back,\n                                              and closes N ms later)"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else { usage() };
    let values = |flag: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == flag
                && let Some(v) = it.next()
            {
                out.push(v.clone());
            }
        }
        out
    };
    let one = |flag: &str| values(flag).into_iter().next();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let addrs = |flag: &str| -> Vec<SocketAddr> {
        values(flag).iter().map(|v| v.parse().unwrap_or_else(|_| panic!("bad address {v}"))).collect()
    };
    match mode.as_str() {
        "serve" => {
            let reuseport = one("--reuseport").map(|v| v.parse().unwrap()).unwrap_or(0);
            serve(&one("--name").unwrap_or_else(|| usage()), &addrs("--listen"), &addrs("--udp"), reuseport)
        }
        "hold-accept" => {
            let wait = Duration::from_millis(one("--wait-ms").map(|v| v.parse().unwrap()).unwrap_or(1000));
            let idle = Duration::from_millis(one("--idle-ms").map(|v| v.parse().unwrap()).unwrap_or(1500));
            let backlog = one("--backlog").map(|v| v.parse().unwrap()).unwrap_or(4096);
            hold_accept(&addrs("--listen"), wait, idle, backlog);
        }
        "send-close" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let count: usize = one("--count").map(|v| v.parse().unwrap()).unwrap_or(1);
            send_close(to, count, has("--linger0"));
        }
        "reconnect" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let then = addrs("--then").into_iter().next().unwrap_or_else(|| usage());
            println!("{}", reconnect(to, then));
        }
        "connect" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let timeout = Duration::from_millis(one("--timeout-ms").map(|v| v.parse().unwrap()).unwrap_or(3000));
            let bind = addrs("--bind").into_iter().next();
            let out = if has("--udp") {
                udp_connect(to, timeout)
            } else if let Some(bind) = bind {
                connect_bound(bind, to, timeout)
            } else {
                connect(to, timeout)
            };
            println!("{out}");
        }
        "dns" => {
            let to = addrs("--to");
            if to.is_empty() {
                usage();
            }
            let name = one("--name").unwrap_or_else(|| usage());
            let timeout = Duration::from_millis(one("--timeout-ms").map(|v| v.parse().unwrap()).unwrap_or(3000));
            println!("{}", dns_query(&to, &name, has("--sendto"), timeout));
        }
        "connect-hold" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            connect_hold(to);
        }
        "connect-loop" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let interval = Duration::from_millis(one("--interval-ms").map(|v| v.parse().unwrap()).unwrap_or(20));
            connect_loop(to, interval);
        }
        "connect-many" => {
            let to = addrs("--to");
            let repeat: usize = one("--repeat").map(|v| v.parse().unwrap()).unwrap_or(1);
            connect_many(&to, repeat);
        }
        "rr" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let count: usize = one("--count").map(|v| v.parse().unwrap()).unwrap_or(1000);
            request_response(to, count, has("--linger0"));
        }
        "pingpong" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let count: usize = one("--count").map(|v| v.parse().unwrap()).unwrap_or(1000);
            ping_pong(to, count);
        }
        "bulk" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let bytes: u64 = one("--bytes").map(|v| v.parse().unwrap()).unwrap_or(1 << 30);
            bulk(to, bytes);
        }
        "stream" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let bytes: u64 = one("--bytes").map(|v| v.parse().unwrap()).unwrap_or(1);
            let write_size: usize = one("--write-size").map(|v| v.parse().unwrap()).unwrap_or(1 << 20);
            let how = one("--how").unwrap_or_else(|| "write".into());
            println!("{}", stream::client(to, bytes, &how, write_size, has("--blocking")));
        }
        "stream-server" => {
            let read_size: usize = one("--read-size").map(|v| v.parse().unwrap()).unwrap_or(1 << 16);
            let delay = Duration::from_millis(one("--delay-ms").map(|v| v.parse().unwrap()).unwrap_or(0));
            let close_delay = Duration::from_millis(one("--close-delay-ms").map(|v| v.parse().unwrap()).unwrap_or(0));
            let opts = stream::ServerOptions {
                splice: has("--splice"),
                read_size,
                delay,
                blocking: has("--blocking"),
                close_delay,
            };
            stream::server(&addrs("--listen"), opts);
        }
        "sink" => {
            sink(&addrs("--listen"), one("--workers").map(|v| v.parse().unwrap()).unwrap_or(1), has("--orig-dst"))
        }
        "cps" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let threads: usize = one("--threads").map(|v| v.parse().unwrap()).unwrap_or(8);
            let duration = Duration::from_millis(one("--duration-ms").map(|v| v.parse().unwrap()).unwrap_or(1000));
            connections_per_second(to, threads, duration);
        }
        _ => usage(),
    }
}

/// getsockopt(SOL_IP, SO_ORIGINAL_DST) or (SOL_IPV6, IP6T_SO_ORIGINAL_DST), as a proxy asks.
fn original_dst(s: &TcpStream) -> Result<SocketAddr, String> {
    let fd = s.as_raw_fd();
    let local = s.local_addr().map_err(|e| e.to_string())?;
    // SAFETY: buffers and lengths are valid for the calls.
    unsafe {
        if local.is_ipv4() {
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getsockopt(fd, libc::SOL_IP, 80, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len) != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(SocketAddr::from((u32::from_be(sin.sin_addr.s_addr).to_be_bytes(), u16::from_be(sin.sin_port))))
        } else {
            let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            if libc::getsockopt(fd, libc::SOL_IPV6, 80, (&mut sin6 as *mut libc::sockaddr_in6).cast(), &mut len) != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(SocketAddr::from((sin6.sin6_addr.s6_addr, u16::from_be(sin6.sin6_port))))
        }
    }
}

fn bind_udp(addr: SocketAddr) -> UdpSocket {
    let fd = bound_socket(addr, libc::SOCK_DGRAM);
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh, bound socket we own.
    unsafe { UdpSocket::from_raw_fd(fd) }
}

fn bind_listener(addr: SocketAddr) -> TcpListener {
    listener_with(addr, false, 4096)
}

fn listener_with(addr: SocketAddr, reuseport: bool, backlog: i32) -> TcpListener {
    let fd = socket_for(addr, libc::SOCK_STREAM);
    if reuseport {
        let one: libc::c_int = 1;
        // SAFETY: valid socket and option buffer.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, (&one as *const i32).cast(), 4) };
    }
    bind_to(fd, addr);
    // SAFETY: a bound socket we own.
    unsafe {
        if libc::listen(fd, backlog) != 0 {
            panic!("listen {addr}: {}", std::io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        TcpListener::from_raw_fd(fd)
    }
}

fn bound_socket(addr: SocketAddr, kind: libc::c_int) -> libc::c_int {
    let fd = socket_for(addr, kind);
    bind_to(fd, addr);
    fd
}

/// IPv6 sockets are v6-only, so that an IPv4 connection's landing is unambiguous.
fn socket_for(addr: SocketAddr, kind: libc::c_int) -> libc::c_int {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(domain, kind | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const i32).cast(), 4);
        if addr.is_ipv6() {
            libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&one as *const i32).cast(), 4);
        }
        fd
    }
}

fn bind_to(fd: libc::c_int, addr: SocketAddr) {
    let (sa, len) = sockaddr(addr);
    // SAFETY: valid socket and address buffer.
    if unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) } != 0 {
        panic!("bind {addr}: {}", std::io::Error::last_os_error());
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// Answers each request line of a connection until the client closes it.
fn answer(name: &str, s: &mut TcpStream) {
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => reply(name, s),
            _ => return,
        }
    }
}

fn reply(name: &str, s: &mut TcpStream) {
    let (orig, orig_error) = match original_dst(s) {
        Ok(a) => (Value::String(a.to_string()), Value::Null),
        Err(e) => (Value::Null, Value::String(e)),
    };
    let reply = json!({
        "server": name,
        "local": s.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "peer": s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        "orig": orig,
        "orig_error": orig_error,
    });
    let _ = writeln!(s, "{reply}");
}

fn serve(name: &str, tcp: &[SocketAddr], udp: &[SocketAddr], reuseport: usize) {
    let name: Arc<str> = Arc::from(name);
    let mut threads = Vec::new();
    let listeners: Vec<TcpListener> = tcp
        .iter()
        .flat_map(|a| {
            if reuseport == 0 {
                vec![bind_listener(*a)]
            } else {
                (0..reuseport).map(|_| listener_with(*a, true, 4096)).collect()
            }
        })
        .collect();
    for listener in listeners {
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let name = name.clone();
                std::thread::Builder::new().stack_size(64 * 1024).spawn(move || answer(&name, &mut s)).expect("spawn");
            }
        }));
    }
    for addr in udp {
        let sock = bind_udp(*addr);
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = sock.recv_from(&mut buf) {
                let reply = json!({"server": &*name, "local": sock.local_addr().unwrap().to_string(), "peer": from.to_string(), "orig": null, "orig_error": null});
                let _ = sock.send_to(reply.to_string().as_bytes(), from);
            }
        }));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}

fn connect(to: SocketAddr, timeout: Duration) -> Value {
    match TcpStream::connect_timeout(&to, timeout) {
        Err(e) => json!({"ok": false, "error": e.to_string()}),
        Ok(s) => exchange(s, timeout),
    }
}

/// One connection kept open: an exchange per line read on stdin, one JSON line each.
fn connect_hold(to: SocketAddr) {
    let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", json!({"ok": false, "error": e.to_string()}));
            return;
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let peername = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let stdin = std::io::stdin();
    loop {
        let out = match writeln!(s, "hello") {
            Err(e) => json!({"ok": false, "error": e.to_string()}),
            Ok(()) => {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(n) if n > 0 => match serde_json::from_str::<Value>(line.trim()) {
                        Ok(reply) => json!({"ok": true, "reply": reply, "peername": peername}),
                        Err(e) => json!({"ok": false, "error": e.to_string()}),
                    },
                    Ok(_) => json!({"ok": false, "error": "connection closed"}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                }
            }
        };
        println!("{out}");
        let _ = std::io::stdout().flush();
        let mut cmd = String::new();
        if stdin.lock().read_line(&mut cmd).unwrap_or(0) == 0 {
            return;
        }
    }
}

/// Connects again and again (each one a full exchange) until stdin reaches its end: one
/// JSON line per attempt with the wall-clock time it started (ms since the epoch), so a
/// test can tell which attempts fell into a window (e.g. a daemon restart).
fn connect_loop(to: SocketAddr, interval: Duration) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut out = std::io::stdout().lock();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let t_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let mut v = connect(to, Duration::from_secs(3));
        v["t_ms"] = json!(t_ms as u64);
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
        std::thread::sleep(interval);
    }
}

fn udp_connect(to: SocketAddr, timeout: Duration) -> Value {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let sock = UdpSocket::bind(bind).unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    if let Err(e) = sock.connect(to) {
        return json!({"ok": false, "error": e.to_string()});
    }
    let _ = sock.send(b"hello");
    let mut buf = [0u8; 1024];
    match sock.recv(&mut buf) {
        Ok(n) => match serde_json::from_slice::<Value>(&buf[..n]) {
            Ok(reply) => {
                json!({"ok": true, "reply": reply, "peername": sock.peer_addr().unwrap().to_string(), "sockname": sock.local_addr().unwrap().to_string()})
            }
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// Every destination at once (one thread each), `repeat` times over: one JSON line each.
fn connect_many(to: &[SocketAddr], repeat: usize) {
    let mut threads = Vec::new();
    for _ in 0..repeat {
        for addr in to {
            let addr = *addr;
            threads.push(
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let mut v = connect(addr, Duration::from_secs(10));
                        v["to"] = Value::String(addr.to_string());
                        v
                    })
                    .expect("spawn"),
            );
        }
    }
    let mut out = std::io::stdout().lock();
    for t in threads {
        let v = t.join().unwrap_or_else(|_| json!({"ok": false, "error": "panic"}));
        let _ = writeln!(out, "{v}");
    }
}

/// Accepts connections and serves them one at a time on each accepting thread (`workers`
/// threads share each listener; no thread spawn in the measured path), asking each one's
/// SO_ORIGINAL_DST first if `orig_dst` (as a sidecar does): echoes a 1-byte read
/// (request/response; after a "q" the sink closes first, as an HTTP/1.0 server does),
/// discards anything larger (bulk), until the client closes.
fn sink(listen: &[SocketAddr], workers: usize, orig_dst: bool) {
    let mut threads = Vec::new();
    for addr in listen {
        let listener = Arc::new(bind_listener(*addr));
        for _ in 0..workers.max(1) {
            let listener = listener.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 18];
                for conn in listener.incoming() {
                    let Ok(mut s) = conn else { continue };
                    let _ = s.set_nodelay(true);
                    if orig_dst {
                        let _ = original_dst(&s);
                    }
                    loop {
                        match s.read(&mut buf) {
                            // A blocking read of an accelerated socket can fail with EAGAIN
                            // (a kernel limitation, see README): wait and read again.
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&s),
                            Ok(0) | Err(_) => break,
                            Ok(1) => {
                                if s.write_all(&buf[..1]).is_err() || buf[0] == b'q' {
                                    break;
                                }
                            }
                            // A request line (as `connect-hold` sends): the usual JSON answer.
                            Ok(n) if n <= 16 && buf[..n].ends_with(b"\n") => reply("sink", &mut s),
                            Ok(_) => {}
                        }
                    }
                }
            }));
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}

/// Connections per second: `threads` clients, each connecting again and again for
/// `duration`: connect, send "q", read the 1-byte answer and the sink's close, close (the
/// sink closes first, so no client port waits in TIME_WAIT). Prints "conns errors
/// elapsed_ns", then each connection's latency (ns), one per line.
fn connections_per_second(to: SocketAddr, threads: usize, duration: Duration) {
    let start = std::time::Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 14);
                let mut errors = 0usize;
                while start.elapsed() < duration {
                    let t = std::time::Instant::now();
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect(to)?;
                        s.set_nodelay(true)?;
                        s.write_all(b"q")?;
                        let mut b = [0u8; 2];
                        if read_retry(&mut s, &mut b[..1])? != 1 {
                            return Err(std::io::Error::other("closed before the answer"));
                        }
                        if read_retry(&mut s, &mut b)? != 0 {
                            return Err(std::io::Error::other("the sink did not close"));
                        }
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => lat.push(t.elapsed().as_nanos() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w.join().expect("client thread");
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_nanos();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(out, "{} {errors} {elapsed}", all.len());
    for ns in all {
        let _ = writeln!(out, "{ns}");
    }
}

/// read(), waiting and reading again on EAGAIN: a blocking read of an accelerated socket
/// can fail with EAGAIN (a kernel limitation, see README's acceleration section).
fn read_retry(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(s),
            other => return other,
        }
    }
}

/// Waits until a socket is readable (or 30 s).
fn wait_readable(s: &TcpStream) {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 30_000) };
}

/// One connection, `count` times: send 1 byte, read the 1-byte answer. Prints one latency
/// (ns) per exchange, then closes.
fn ping_pong(to: SocketAddr, count: usize) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut b = [0u8; 1];
    for _ in 0..count {
        let start = std::time::Instant::now();
        s.write_all(b"x").expect("write");
        assert_eq!(read_retry(&mut s, &mut b).expect("read"), 1, "the sink closed");
        let _ = writeln!(out, "{}", start.elapsed().as_nanos());
    }
}

/// `count` times: connect, send 1 byte, read 1 byte, close. Prints one latency (ns) per line.
fn request_response(to: SocketAddr, count: usize, linger0: bool) {
    let mut out = std::io::stdout().lock();
    for _ in 0..count {
        let start = std::time::Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect(to)?;
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            if read_retry(&mut s, &mut b)? != 1 {
                return Err(std::io::Error::other("closed before the answer"));
            }
            if linger0 {
                set_linger0(&s);
            }
            Ok(())
        })();
        let ns = start.elapsed().as_nanos();
        match ok {
            Ok(()) => {
                let _ = writeln!(out, "{ns}");
            }
            Err(e) => {
                let _ = writeln!(out, "error {e}");
            }
        }
    }
}

/// Sends `bytes` bytes over one connection; prints MB/s.
fn bulk(to: SocketAddr, bytes: u64) {
    let mut s = TcpStream::connect(to).expect("connect");
    let buf = vec![0x5au8; 1 << 20];
    let start = std::time::Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        // Never a 1-byte write: the sink echoes those.
        let n = if n == 1 { 2 } else { n };
        s.write_all(&buf[..n]).expect("write");
        left = left.saturating_sub(n as u64);
    }
    s.shutdown(std::net::Shutdown::Write).ok();
    let mut rest = [0u8; 4096];
    while matches!(read_retry(&mut s, &mut rest), Ok(n) if n > 0) {}
    let secs = start.elapsed().as_secs_f64();
    println!("{:.1}", bytes as f64 / secs / 1e6);
}

/// A sidecar that is slow to accept: listens, accepts nothing for `wait`, then accepts every
/// pending connection (until none arrives for `idle`) and reports each one: what
/// SO_ORIGINAL_DST answered, its addresses, and the first line the client sent.
fn hold_accept(listen: &[SocketAddr], wait: Duration, idle: Duration, backlog: i32) {
    let listeners: Vec<TcpListener> = listen.iter().map(|a| listener_with(*a, false, backlog)).collect();
    println!("ready");
    let _ = std::io::stdout().flush();
    std::thread::sleep(wait);
    for l in &listeners {
        l.set_nonblocking(true).expect("nonblocking");
    }
    let mut out = std::io::stdout().lock();
    let mut last = std::time::Instant::now();
    while last.elapsed() < idle {
        let mut any = false;
        for l in &listeners {
            while let Ok((mut s, _)) = l.accept() {
                any = true;
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let (orig, orig_error) = match original_dst(&s) {
                    Ok(a) => (Value::String(a.to_string()), Value::Null),
                    Err(e) => (Value::Null, Value::String(e)),
                };
                let mut line = String::new();
                let _ = BufReader::new(&mut s).read_line(&mut line);
                let mut v = json!({
                    "local": s.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                    "peer": s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
                    "orig": orig,
                    "orig_error": orig_error,
                    "data": line.trim(),
                });
                // The client gets the same report, as from `serve`.
                v["server"] = Value::String("hold-accept".into());
                let _ = writeln!(s, "{v}");
                let _ = writeln!(out, "{v}");
            }
        }
        if any {
            last = std::time::Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SO_LINGER 0: the socket's close resets the connection (no FIN, no TIME_WAIT).
fn set_linger0(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid socket and option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
}

/// `count` times: connect, send one line naming the connection, close at once (with
/// SO_LINGER 0, a reset). One JSON line per connection.
fn send_close(to: SocketAddr, count: usize, linger0: bool) {
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let v = match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
            Err(e) => json!({"ok": false, "error": e.to_string(), "errno": e.raw_os_error()}),
            Ok(mut s) => {
                let sockname = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = writeln!(s, "conn {i} {sockname}");
                if linger0 {
                    set_linger0(&s);
                }
                json!({"ok": true, "sockname": sockname, "peername": s.peer_addr().map(|a| a.to_string()).unwrap_or_default()})
            }
        };
        let _ = writeln!(out, "{v}");
    }
}

/// connect() on a socket bound first to `bind`.
fn connect_bound(bind: SocketAddr, to: SocketAddr, timeout: Duration) -> Value {
    let fd = socket_for(bind, libc::SOCK_STREAM);
    bind_to(fd, bind);
    use std::os::fd::FromRawFd;
    let (sa, len) = sockaddr(to);
    // SAFETY: a socket we own, a valid address.
    if unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own socket.
        unsafe { libc::close(fd) };
        return json!({"ok": false, "error": e.to_string()});
    }
    // SAFETY: a connected socket we own.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    exchange(s, timeout)
}

/// One socket, two connect() calls: the first to `to` (expected to fail), then to `then`.
fn reconnect(to: SocketAddr, then: SocketAddr) -> Value {
    let fd = socket_for(to, libc::SOCK_STREAM);
    let connect = |a: SocketAddr| -> Result<(), String> {
        let (sa, len) = sockaddr(a);
        // SAFETY: a socket we own, a valid address.
        if unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(())
    };
    let first = connect(to);
    let second = connect(then);
    use std::os::fd::FromRawFd;
    // SAFETY: a socket we own.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    match second {
        Err(e) => json!({"ok": false, "first": format!("{first:?}"), "error": e}),
        Ok(()) => {
            let mut v = exchange(s, Duration::from_secs(3));
            v["first"] = Value::String(format!("{first:?}"));
            v
        }
    }
}

/// Sends a request line and reads the server's JSON answer, with the client's own view.
fn exchange(mut s: TcpStream, timeout: Duration) -> Value {
    let peername = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let sockname = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let orig = original_dst(&s).map(|a| a.to_string()).ok();
    let _ = s.set_read_timeout(Some(timeout));
    let _ = writeln!(s, "hello");
    let mut line = String::new();
    match BufReader::new(&s).read_line(&mut line) {
        Ok(n) if n > 0 => match serde_json::from_str::<Value>(line.trim()) {
            Ok(reply) => {
                json!({"ok": true, "reply": reply, "peername": peername, "sockname": sockname, "client_orig": orig})
            }
            Err(e) => json!({"ok": false, "error": format!("bad reply {line:?}: {e}")}),
        },
        Ok(_) => json!({"ok": false, "error": "connection closed without a reply"}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// One DNS query (type A) for `name` to each of `to` in turn, over one UDP socket:
/// connect() + send(), or sendto() (the socket stays unconnected). An IPv6 first destination
/// makes a dual-stack socket, so that a v4-mapped one ([::ffff:a.b.c.d]) travels as IPv4.
/// Prints, for the first destination, the first A record, the reply's source as recvfrom()
/// reports it and the socket's getpeername() (null when not connected), and the same for the
/// next ones under `then`; a reply that is not DNS (a netprobe server's JSON) is `reply`.
fn dns_query(to: &[SocketAddr], name: &str, sendto: bool, timeout: Duration) -> Value {
    let sock = if to[0].is_ipv4() {
        UdpSocket::bind("0.0.0.0:0").expect("bind")
    } else {
        // SAFETY: a fresh socket we own, its option set before use (connect or sendto binds it).
        unsafe {
            use std::os::fd::FromRawFd;
            let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let zero: libc::c_int = 0;
            libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&zero as *const i32).cast(), 4);
            UdpSocket::from_raw_fd(fd)
        }
    };
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut results: Vec<Value> = to.iter().map(|t| dns_exchange(&sock, *t, name, sendto)).collect();
    let mut first = results.remove(0);
    if !results.is_empty() {
        first["then"] = Value::Array(results);
    }
    first
}

fn dns_exchange(sock: &UdpSocket, to: SocketAddr, name: &str, sendto: bool) -> Value {
    let id = (std::process::id() & 0xffff) as u16;
    let query = dns_message(id, name);
    let sent = if sendto { sock.send_to(&query, to) } else { sock.connect(to).and_then(|()| sock.send(&query)) };
    let error = |e: std::io::Error| {
        let text = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".to_string(),
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::PermissionDenied => "operation not permitted".to_string(),
            _ => e.to_string(),
        };
        json!({"ok": false, "error": text})
    };
    if let Err(e) = sent {
        return error(e);
    }
    let mut buf = [0u8; 1500];
    let (n, from) = match sock.recv_from(&mut buf) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let peername = sock.peer_addr().ok().map(|a| a.to_string());
    let sockname = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut out = json!({"ok": true, "from": from.to_string(), "peername": peername, "sockname": sockname});
    if let Ok(reply) = serde_json::from_slice::<Value>(&buf[..n]) {
        out["reply"] = reply;
        return out;
    }
    match dns_answer(&buf[..n], id) {
        Ok((rcode, answer)) => {
            out["rcode"] = json!(rcode);
            out["answer"] = json!(answer.map(|a| a.to_string()));
            out
        }
        Err(e) => json!({"ok": false, "error": format!("bad reply from {from}: {e}")}),
    }
}

/// A standard query (recursion desired) for the A records of `name`.
fn dns_message(id: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// (rcode, first A record) of a reply to query `id`.
fn dns_answer(m: &[u8], id: u16) -> Result<(u8, Option<std::net::Ipv4Addr>), String> {
    let get = |i: usize| m.get(i).copied().ok_or_else(|| "truncated".to_string());
    let u16_at = |i: usize| -> Result<u16, String> { Ok(u16::from_be_bytes([get(i)?, get(i + 1)?])) };
    if u16_at(0)? != id || get(2)? & 0x80 == 0 {
        return Err("not a reply to our query".into());
    }
    let rcode = get(3)? & 0x0f;
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    // A name: labels up to a zero byte, or ending in a compression pointer (two bytes).
    let skip_name = |mut i: usize| -> Result<usize, String> {
        loop {
            let len = get(i)?;
            if len == 0 {
                return Ok(i + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Ok(i + 2);
            }
            i += 1 + len as usize;
        }
    };
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(i)? + 4;
    }
    for _ in 0..answers {
        i = skip_name(i)?;
        let (rtype, len) = (u16_at(i)?, u16_at(i + 8)? as usize);
        let data = i + 10;
        if rtype == 1 && len == 4 {
            return Ok((
                rcode,
                Some(std::net::Ipv4Addr::new(get(data)?, get(data + 1)?, get(data + 2)?, get(data + 3)?)),
            ));
        }
        i = data + len;
    }
    Ok((rcode, None))
}

/// Byte streams with a known content in both directions, to prove that a path (accelerated
/// or not) delivers the same bytes, in order, with half-close, whatever the system calls.
mod stream {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::{Shutdown, SocketAddr, TcpListener, TcpStream},
        os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        time::Duration,
    };

    use serde_json::{Value, json};

    /// The pattern of one direction: byte `i` of stream `seed`.
    fn pattern(seed: u64, i: u64) -> u8 {
        let x = (i ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 56) as u8
    }

    fn fill(seed: u64, from: u64, buf: &mut [u8]) {
        for (k, b) in buf.iter_mut().enumerate() {
            *b = pattern(seed, from + k as u64);
        }
    }

    /// Counts the bytes of a stream and checks them against the pattern.
    struct Check {
        seed: u64,
        n: u64,
        ok: bool,
    }

    impl Check {
        fn new(seed: u64) -> Check {
            Check { seed, n: 0, ok: true }
        }
        fn feed(&mut self, data: &[u8]) {
            for &b in data {
                if b != pattern(self.seed, self.n) {
                    self.ok = false;
                }
                self.n += 1;
            }
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: a valid array for pipe2.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe");
        // SAFETY: fresh descriptors we own.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn check_rc(rc: isize, what: &str) -> std::io::Result<usize> {
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(rc as usize)
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> std::io::Result<usize> {
        // SAFETY: plain descriptors, null offsets (pipes and sockets).
        let rc =
            unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE) };
        check_rc(rc, "splice")
    }

    /// Reads a socket the way event loops do (non-blocking, waiting in poll() on EAGAIN), or
    /// with plain blocking reads.
    struct Reader<'a> {
        s: &'a TcpStream,
        blocking: bool,
    }

    impl<'a> Reader<'a> {
        fn new(s: &'a TcpStream, blocking: bool) -> std::io::Result<Reader<'a>> {
            s.set_nonblocking(!blocking)?;
            Ok(Reader { s, blocking })
        }
    }

    impl Read for Reader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            loop {
                match (&mut &*self.s).read(buf) {
                    Err(e) if !self.blocking && e.kind() == std::io::ErrorKind::WouldBlock => {
                        let mut p = libc::pollfd { fd: self.s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                        // SAFETY: one valid pollfd.
                        if unsafe { libc::poll(&mut p, 1, 30_000) } == 0 {
                            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no data for 30 s"));
                        }
                    }
                    other => return other,
                }
            }
        }
    }

    /// Writes all of `data` to a non-blocking socket, waiting for room with poll(); counts
    /// the writes the kernel took only in part.
    fn write_nonblocking(fd: RawFd, mut data: &[u8], partial: &mut u64, again: &mut u64) -> std::io::Result<()> {
        while !data.is_empty() {
            // SAFETY: a valid buffer.
            let rc = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    *again += 1;
                    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 10_000) };
                    continue;
                }
                return Err(e);
            }
            if (rc as usize) < data.len() {
                *partial += 1;
            }
            data = &data[rc as usize..];
        }
        Ok(())
    }

    /// Sends `bytes` of pattern 1 `how` (write|sendfile|splice), half-closes, then reads
    /// the server's JSON line and its bytes of pattern 2 until EOF.
    pub fn client(to: SocketAddr, bytes: u64, how: &str, write_size: usize, blocking: bool) -> Value {
        let s = match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
            Ok(s) => s,
            Err(e) => return json!({"ok": false, "error": format!("connect: {e}")}),
        };
        let peername = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let sockname = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
        if std::env::var_os("NETPROBE_NO_TIMEOUT").is_none() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        }
        let (mut partial, mut again) = (0u64, 0u64);
        let fd = s.as_raw_fd();
        let sent = (|| -> std::io::Result<()> {
            match how {
                "write" => {
                    s.set_nonblocking(true)?;
                    let mut buf = vec![0u8; write_size.max(1)];
                    let mut off = 0u64;
                    while off < bytes {
                        let n = (bytes - off).min(buf.len() as u64) as usize;
                        fill(1, off, &mut buf[..n]);
                        write_nonblocking(fd, &buf[..n], &mut partial, &mut again)?;
                        off += n as u64;
                    }
                    s.set_nonblocking(false)?;
                }
                "sendfile" => {
                    let path = std::env::temp_dir().join(format!("netprobe-sendfile-{}", std::process::id()));
                    let mut f = std::fs::File::options().read(true).write(true).create_new(true).open(&path)?;
                    let _ = std::fs::remove_file(&path);
                    let mut buf = vec![0u8; 1 << 20];
                    let mut off = 0u64;
                    while off < bytes {
                        let n = (bytes - off).min(buf.len() as u64) as usize;
                        fill(1, off, &mut buf[..n]);
                        f.write_all(&buf[..n])?;
                        off += n as u64;
                    }
                    let mut offset: libc::off_t = 0;
                    while (offset as u64) < bytes {
                        let left = (bytes - offset as u64) as usize;
                        // SAFETY: valid descriptors and offset.
                        let rc = unsafe { libc::sendfile(fd, f.as_raw_fd(), &mut offset, left) };
                        if check_rc(rc, "sendfile")? == 0 {
                            return Err(std::io::Error::other("sendfile sent nothing"));
                        }
                    }
                }
                "splice" => {
                    let (r, w) = pipe();
                    let mut w = std::fs::File::from(w);
                    let mut buf = vec![0u8; 1 << 16];
                    let mut off = 0u64;
                    while off < bytes {
                        let n = (bytes - off).min(buf.len() as u64) as usize;
                        fill(1, off, &mut buf[..n]);
                        w.write_all(&buf[..n])?;
                        let mut left = n;
                        while left > 0 {
                            left -= splice(r.as_raw_fd(), fd, left)?;
                        }
                        off += n as u64;
                    }
                }
                other => return Err(std::io::Error::other(format!("unknown --how {other}"))),
            }
            s.shutdown(Shutdown::Write)
        })();
        if let Err(e) = sent {
            return json!({"ok": false, "error": format!("send: {e}")});
        }
        let mut reader = match Reader::new(&s, blocking) {
            Ok(r) => BufReader::new(r),
            Err(e) => return json!({"ok": false, "error": format!("set blocking: {e}")}),
        };
        let mut line = String::new();
        let reply: Value = match reader.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(line.trim()).unwrap_or(json!({"unparsed": line})),
            Ok(_) => return json!({"ok": false, "error": "closed before the answer"}),
            Err(e) => return json!({"ok": false, "error": format!("read the answer: {e}")}),
        };
        let mut back = Check::new(2);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => back.feed(&buf[..n]),
                Err(e) => return json!({"ok": false, "error": format!("read back: {e}"), "server": reply}),
            }
        }
        json!({
            "ok": true,
            "sent": bytes,
            "partial_writes": partial,
            "would_block": again,
            "server": reply,
            "back_bytes": back.n,
            "back_ok": back.ok && back.n == bytes,
            "peername": peername,
            "sockname": sockname,
        })
    }

    /// TCP_INFO's count of bytes received through TCP (0 when every byte was redirected
    /// into the socket by sk_msg).
    fn tcp_bytes_received(fd: RawFd) -> u64 {
        // SAFETY: a zeroed tcp_info and its size.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            );
            info.tcpi_bytes_received
        }
    }

    #[derive(Clone, Copy)]
    pub struct ServerOptions {
        /// Read with splice() (socket → pipe) and write with splice() (pipe → socket).
        pub splice: bool,
        pub read_size: usize,
        /// Wait before reading.
        pub delay: Duration,
        /// Plain blocking reads instead of poll() + non-blocking reads.
        pub blocking: bool,
        /// Wait between the last byte sent and the close.
        pub close_delay: Duration,
    }

    fn serve_one(mut s: TcpStream, o: ServerOptions) -> std::io::Result<()> {
        let ServerOptions { splice: use_splice, read_size, delay, blocking, close_delay } = o;
        std::thread::sleep(delay);
        let fd = s.as_raw_fd();
        let mut got = Check::new(1);
        let mut buf = vec![0u8; read_size.max(1)];
        if use_splice {
            let (r, w) = pipe();
            let mut r = std::fs::File::from(r);
            loop {
                let n = splice(fd, w.as_raw_fd(), read_size.max(1))?;
                if n == 0 {
                    break;
                }
                let mut left = n;
                while left > 0 {
                    let want = left.min(buf.len());
                    let k = r.read(&mut buf[..want])?;
                    got.feed(&buf[..k]);
                    left -= k;
                }
            }
        } else {
            let mut reader = Reader::new(&s, blocking)?;
            loop {
                match reader.read(&mut buf)? {
                    0 => break,
                    n => got.feed(&buf[..n]),
                }
            }
            s.set_nonblocking(false)?;
        }
        let orig = super::original_dst(&s).map(|a| a.to_string()).ok();
        let answer = json!({
            "bytes": got.n,
            "pattern_ok": got.ok,
            "local": s.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "peer": s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            "orig": orig,
            "tcp_bytes_received": tcp_bytes_received(fd),
            "spliced": use_splice,
        });
        writeln!(s, "{answer}")?;
        let mut off = 0u64;
        let (r, w) = pipe();
        let mut w = std::fs::File::from(w);
        while off < got.n {
            let n = (got.n - off).min(buf.len() as u64) as usize;
            fill(2, off, &mut buf[..n]);
            if use_splice {
                w.write_all(&buf[..n])?;
                let mut left = n;
                while left > 0 {
                    left -= splice(r.as_raw_fd(), fd, left)?;
                }
            } else {
                s.write_all(&buf[..n])?;
            }
            off += n as u64;
        }
        std::thread::sleep(close_delay);
        Ok(())
    }

    pub fn server(listen: &[SocketAddr], o: ServerOptions) {
        let listeners: Vec<TcpListener> = listen.iter().map(|a| super::bind_listener(*a)).collect();
        let mut threads = Vec::new();
        for l in listeners {
            threads.push(std::thread::spawn(move || {
                for conn in l.incoming() {
                    let Ok(s) = conn else { continue };
                    std::thread::spawn(move || {
                        if let Err(e) = serve_one(s, o) {
                            eprintln!("stream-server: {e}");
                        }
                    });
                }
            }));
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        for t in threads {
            let _ = t.join();
        }
    }
}
