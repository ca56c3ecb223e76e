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
        "usage:\n  netprobe serve --name NAME --listen ADDR:PORT... [--udp ADDR:PORT...] [--close]\n  netprobe connect --to ADDR:PORT [--udp] [--timeout-ms N]\n  netprobe dns --to ADDR:PORT... --name NAME [--sendto] [--timeout-ms N]  (an A query to each, over one UDP socket; [::ffff:a.b.c.d] = dual-stack)\n  netprobe connect-many --to ADDR:PORT... [--repeat N]\n  netprobe connect-hold --to ADDR:PORT        (one exchange per stdin line)\n  netprobe connect-loop --to ADDR:PORT [--interval-ms N]   (connects until stdin closes; one JSON line each, with the time)\n  netprobe rr --to ADDR:PORT --count N      (connect, 1-byte request/response, close; prints latencies in ns)\n  netprobe bulk --to ADDR:PORT --bytes N     (prints MB/s)\n  netprobe sink --listen ADDR:PORT           (accepts and discards; 1-byte echo for rr)\n  netprobe serve ... [--reuseport N]         (N SO_REUSEPORT listeners per address)\n  netprobe hold-accept --listen ADDR:PORT... --wait-ms N [--backlog B] [--idle-ms N]\n                                             (listens, accepts nothing for N ms, then accepts\n                                              every pending connection: one JSON line each)\n  netprobe send-close --to ADDR:PORT --count N [--linger0]\n                                             (connect, send a line, close at once; N times)\n  netprobe reconnect --to ADDR:PORT --then ADDR:PORT\n                                             (one socket: connect, and after it fails connect again)\n  netprobe connect ... [--bind ADDR:PORT]     (bind before connecting)"
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
            request_response(to, count);
        }
        "bulk" => {
            let to = addrs("--to").into_iter().next().unwrap_or_else(|| usage());
            let bytes: u64 = one("--bytes").map(|v| v.parse().unwrap()).unwrap_or(1 << 30);
            bulk(to, bytes);
        }
        "sink" => sink(&addrs("--listen")),
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

/// Accepts connections and serves them one at a time on the accepting thread (no thread
/// spawn in the measured path): echoes a 1-byte read (request/response), discards
/// anything larger (bulk), until the client closes.
fn sink(listen: &[SocketAddr]) {
    let mut threads = Vec::new();
    for addr in listen {
        let listener = bind_listener(*addr);
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 18];
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_nodelay(true);
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(1) => {
                            if s.write_all(&buf[..1]).is_err() {
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
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}

/// `count` times: connect, send 1 byte, read 1 byte, close. Prints one latency (ns) per line.
fn request_response(to: SocketAddr, count: usize) {
    let mut out = std::io::stdout().lock();
    for _ in 0..count {
        let start = std::time::Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect(to)?;
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
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
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
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
