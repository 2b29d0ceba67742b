//! Real backend servers on loopback (echo, identify-and-hold, digest-after-EOF, streamer,
//! resetter), ports that refuse or hang, and the client side of talking to them through
//! tcplb.

use super::bytes::{pattern, read_digest};
use super::process::Tcplb;
use super::wait_until;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What a backend server does with each connection.
pub type Handler = Arc<dyn Fn(TcpStream, &Backend) + Send + Sync>;

/// A backend server on 127.0.0.1, a thread per connection; counts what it sees.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: AtomicUsize,
    /// Connections open right now.
    pub active: AtomicUsize,
    pub id: u8,
    stop: AtomicBool,
    pub counter: AtomicU64,
    /// Clones of open connections by number, so `kill` can cut them; a connection's clone
    /// is dropped as soon as its handler returns, so it never holds the socket open.
    conns: Mutex<std::collections::HashMap<usize, TcpStream>>,
    acceptor: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Backend {
    /// Starts a backend whose connections are served by `handler`. Its accept queue is
    /// deep (4096, the kernel's cap here, not std's 128): tests open thousands of sessions
    /// in a burst, and on a loaded machine an overflowing queue drops handshakes and can
    /// end a connection tcplb already counts as made in a reset.
    pub fn start(id: u8, handler: Handler) -> Arc<Backend> {
        Self::serve(id, ReservedPort::new().listen_backlog(4096), handler)
    }

    /// Starts a backend on a given listener.
    pub fn serve(id: u8, listener: TcpListener, handler: Handler) -> Arc<Backend> {
        let backend = Arc::new(Backend {
            addr: listener.local_addr().expect("addr"),
            accepted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            id,
            stop: AtomicBool::new(false),
            counter: AtomicU64::new(0),
            conns: Mutex::new(std::collections::HashMap::new()),
            acceptor: Mutex::new(None),
        });
        let me = Arc::clone(&backend);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if me.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let number = me.accepted.fetch_add(1, Ordering::SeqCst);
                me.active.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    me.conns.lock().expect("conns").insert(number, clone);
                }
                let (me, handler) = (Arc::clone(&me), Arc::clone(&handler));
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        handler(stream, &me);
                        me.conns.lock().expect("conns").remove(&number);
                        me.active.fetch_sub(1, Ordering::SeqCst);
                    })
                    .expect("spawn backend connection thread");
            }
        });
        *backend.acceptor.lock().expect("acceptor") = Some(acceptor);
        backend
    }

    /// Like a crashed server: the port closes (connects are refused) and every open
    /// connection is cut.
    pub fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.lock().expect("acceptor").take() {
            acceptor.join().expect("acceptor thread");
        }
        for (_, conn) in self.conns.lock().expect("conns").drain() {
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// The `HOST:PORT` argument for tcplb.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// Stops accepting (the listener closes after one more connection attempt).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }

    /// Waits until a streaming handler is stuck: `counter` (bytes it wrote) has stopped
    /// growing because every socket buffer on the way is full.
    pub fn wait_stalled(&self) {
        let mut last = u64::MAX;
        wait_until(
            || {
                let now = self.counter.load(Ordering::SeqCst);
                let stuck = now == last && now > 0;
                last = now;
                if !stuck {
                    thread::sleep(Duration::from_millis(200));
                }
                stuck
            },
            || "the backend never filled the path".to_string(),
        );
    }

    /// Waits until `active` equals `n`.
    pub fn wait_active(&self, n: usize) {
        wait_until(
            || self.active.load(Ordering::SeqCst) == n,
            || {
                format!(
                    "backend {} has {} active, wanted {n}",
                    self.id,
                    self.active.load(Ordering::SeqCst)
                )
            },
        );
    }
}

/// Echoes every byte back until EOF, then closes.
pub fn echo() -> Handler {
    Arc::new(|mut stream, _| echo_until_eof(&mut stream))
}

/// Writes back every byte read until EOF or an error.
pub fn echo_until_eof(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

/// Sends its id byte, then holds the connection until the client closes.
pub fn identify_and_hold() -> Handler {
    Arc::new(|mut stream, me| {
        if stream.write_all(&[me.id]).is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    })
}

/// Reads until EOF, then answers "LEN HASH\n" and closes.
pub fn digest_after_eof() -> Handler {
    Arc::new(|mut stream, _| {
        if let Ok((len, hash)) = read_digest(&mut stream) {
            let _ = stream.write_all(format!("{len} {hash}\n").as_bytes());
        }
    })
}

/// Writes `pattern(seed, len)` and closes; counts bytes written in `counter`.
pub fn streamer(seed: u64, len: u64) -> Handler {
    Arc::new(move |mut stream, me| {
        let chunk = pattern(seed, 1 << 20);
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            // Small writes so the counter tracks how far the kernel let us get.
            for piece in chunk[..n].chunks(64 * 1024) {
                if stream.write_all(piece).is_err() {
                    return;
                }
                me.counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
            left -= n as u64;
        }
    })
}

/// A port where nothing listens: connects to its `addr` are refused for as long as it is
/// held, and no other socket (tcplb's own listener included) can be given the port meanwhile.
/// `listen()` brings a backend up there later.
pub fn refusing_port() -> ReservedPort {
    ReservedPort::new()
}

/// Connects through tcplb, reads the backend's id byte.
pub fn connect_and_identify(tcplb: &Tcplb) -> (TcpStream, u8) {
    let mut stream = tcplb.connect();
    let mut id = [0u8; 1];
    stream.read_exact(&mut id).expect("backend id");
    (stream, id[0])
}

/// Ends a held session cleanly and waits until tcplb has closed it: after our FIN the
/// backend closes, and tcplb closes us only once the session (and its lease) is gone.
pub fn close_and_wait(mut stream: TcpStream) {
    // Fails only if tcplb already reset the connection, which ends it just as well.
    let _ = stream.shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

/// Sends `data` and reads the same number of bytes back concurrently; returns what came back.
pub fn echo_through(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut reader = stream.try_clone().expect("clone");
    let mut writer = stream;
    thread::scope(|s| {
        s.spawn(move || {
            writer.write_all(data).expect("write");
            writer.shutdown(Shutdown::Write).expect("shutdown");
        });
        let mut back = Vec::with_capacity(data.len());
        reader.read_to_end(&mut back).expect("read echo");
        back
    })
}

/// A loopback port that is bound but not listening: connects to it are refused, yet no other
/// socket (another test's backend, or an ephemeral port of an outgoing connect) can take it,
/// so it can be turned into a listener on the same port later.
pub struct ReservedPort {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind reserved port");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr");
        ReservedPort { socket, addr }
    }

    /// Starts listening on the reserved port.
    pub fn listen(self) -> TcpListener {
        self.listen_backlog(128)
    }

    /// Starts listening with a given accept backlog.
    pub fn listen_backlog(self, backlog: i32) -> TcpListener {
        self.socket
            .listen(backlog)
            .expect("listen on reserved port");
        self.socket.into()
    }
}

/// Listens again on a port a killed backend used (retrying briefly while the old socket goes).
pub fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("re-bind {addr}: {e}"),
        }
    }
}

/// Sends its id byte, then echoes every byte back until EOF.
pub fn identify_then_echo() -> Handler {
    Arc::new(|mut stream, me| {
        if stream.write_all(&[me.id]).is_err() {
            return;
        }
        echo_until_eof(&mut stream);
    })
}

/// Sends `piece` and reads it back (through an echo backend); panics on wrong bytes.
pub fn echo_piece(stream: &mut TcpStream, piece: &[u8]) -> io::Result<()> {
    stream.write_all(piece)?;
    let mut back = vec![0u8; piece.len()];
    stream.read_exact(&mut back)?;
    assert!(back == piece, "an echoed piece came back with wrong bytes");
    Ok(())
}

/// Ends an echo session: half-closes, expects EOF with no byte more.
pub fn finish_echo(mut stream: TcpStream) {
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read to EOF");
    assert!(
        rest.is_empty(),
        "{} unexpected bytes after the echo",
        rest.len()
    );
}

/// Whether an I/O error is the peer ending the connection (reset, EOF mid-read, broken pipe),
/// as opposed to a timeout (a hang).
pub fn is_peer_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Makes a listener that is never accepted from swallow connects: fills its accept queue
/// until a connect gets no answer (the kernel drops the SYN), and returns the connections
/// that filled it (keep them open). A connect to it then hangs until the caller gives up.
pub fn fill_accept_queue(addr: SocketAddr) -> Vec<TcpStream> {
    let mut filled = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => filled.push(stream),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return filled,
            Err(e) => panic!("filling the accept queue of {addr}: {e}"),
        }
        assert!(
            filled.len() < 1000,
            "the accept queue of {addr} never fills"
        );
    }
}

/// Waits until connects to `addr` are refused. After [`Backend::kill`] the port is normally
/// closed at once, but a process being spawned at that moment (tests run in parallel) holds a
/// copy of the listening socket until it execs, and a connect in that window is accepted and
/// then reset.
pub fn wait_refused(addr: SocketAddr) {
    wait_until(
        || {
            matches!(
                TcpStream::connect(addr),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
            )
        },
        || format!("{addr} still accepts connects"),
    );
}

/// A port where a connect to any loopback address (127.x.y.z) hangs: a listener on every
/// address, never accepted, whose queue (backlog 0: one connection) is full, so the kernel
/// drops every further SYN. Connects hang for as long as this lives.
pub struct HangingPort {
    _listener: socket2::Socket,
    _filler: TcpStream,
    pub port: u16,
}

impl HangingPort {
    pub fn new() -> HangingPort {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        listener
            .bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let port = listener
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr")
            .port();
        let filler = TcpStream::connect(("127.0.0.1", port)).expect("fill the accept queue");
        HangingPort {
            _listener: listener,
            _filler: filler,
            port,
        }
    }

    /// TCP connects under way to this port (SYN sent, no answer), from any process.
    pub fn connects_hanging(&self) -> usize {
        let port = format!(":{:04X}", self.port);
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[2].ends_with(&port) && fields[3] == "02"
            })
            .count()
    }
}
