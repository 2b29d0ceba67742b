//! Test machinery for client addresses and the PROXY protocol: clients bound to any
//! 127.x.y.z, PROXY headers written and read by the tests' own code (independent of
//! tcplb's), a backend that reports the header it was sent, and real HAProxy and nginx
//! processes for interoperability (skipped, with the reason printed, where not installed).

use super::{Backend, Handler, PATIENCE, echo_until_eof, wait_until};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// The `n`-th of many distinct client addresses: 127.1.0.0, 127.1.0.1, ... (all of
/// 127/8 is this host's on Linux, so a socket can be bound to any of them).
pub fn client_ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ))
}

/// Connects to `to` from `from` (any port).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // The connection's TIME_WAIT (it closes first) would otherwise keep its port from a later
    // bind to 0.0.0.0 on that port (another test's tcplb listening on a port the kernel just
    // handed out): with SO_REUSEADDR on both sides, it does not.
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

/// A version-1 header: `PROXY TCP4 ...\r\n` (or TCP6).
pub fn v1_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// The version-2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";

/// A version-2 header: PROXY command, TCP over IPv4.
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, destination) else {
        panic!("IPv4 only");
    };
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&d.ip().octets());
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out
}

/// A version-2 LOCAL header (what a proxy's own health check sends).
pub fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

/// A header as a backend received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub version: u8,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Reads one PROXY header (v1 or v2, PROXY command, TCP) byte by byte, so nothing after
/// it is consumed.
pub fn read_header(stream: &mut TcpStream) -> io::Result<Seen> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first)?;
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if first[0] == b'P' {
        let mut line = vec![first[0]];
        while !line.ends_with(b"\r\n") {
            if line.len() > 107 {
                return Err(bad("v1 line too long"));
            }
            stream.read_exact(&mut first)?;
            line.push(first[0]);
        }
        let text = String::from_utf8(line).map_err(|_| bad("not text"))?;
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        if f.len() != 6 || f[0] != "PROXY" {
            return Err(bad(&format!("bad v1 line {text:?}")));
        }
        let addr = |ip: &str, port: &str| -> io::Result<SocketAddr> {
            let ip: IpAddr = ip.parse().map_err(|_| bad("bad ip"))?;
            Ok(SocketAddr::new(
                ip,
                port.parse().map_err(|_| bad("bad port"))?,
            ))
        };
        return Ok(Seen {
            version: 1,
            source: addr(f[2], f[4])?,
            destination: addr(f[3], f[5])?,
        });
    }
    let mut fixed = [0u8; 16];
    fixed[0] = first[0];
    stream.read_exact(&mut fixed[1..])?;
    if &fixed[..12] != V2_SIGNATURE || fixed[12] != 0x21 {
        return Err(bad("bad v2 signature or command"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let (source, destination) = match fixed[13] {
        0x11 if len >= 12 => {
            let ip = |at: usize| IpAddr::from([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x21 if len >= 36 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                IpAddr::from(o)
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        other => return Err(bad(&format!("family {other:#x}"))),
    };
    Ok(Seen {
        version: 2,
        source,
        destination,
    })
}

/// Reads the PROXY header, answers with one line `V SOURCE DESTINATION\n` (or
/// `error WHY\n`), then echoes every byte until EOF.
pub fn report_header_then_echo() -> Handler {
    Arc::new(|mut stream, _| {
        let line = match read_header(&mut stream) {
            Ok(seen) => format!("{} {} {}\n", seen.version, seen.source, seen.destination),
            Err(e) => format!("error {e}\n"),
        };
        if stream.write_all(line.as_bytes()).is_ok() {
            echo_until_eof(&mut stream);
        }
    })
}

/// Reads the report line of [`report_header_then_echo`]: (version, source, destination).
pub fn read_report(stream: &mut TcpStream) -> (u8, SocketAddr, SocketAddr) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        stream
            .read_exact(&mut byte)
            .expect("the backend's report line");
        line.push(byte[0]);
    }
    let text = String::from_utf8(line).expect("text");
    let f: Vec<&str> = text.trim_end().split(' ').collect();
    assert!(f.len() == 3 && f[0] != "error", "backend: {text}");
    (
        f[0].parse().expect("version"),
        f[1].parse().expect("source"),
        f[2].parse().expect("destination"),
    )
}

/// Starts a backend that reports its PROXY header (see [`report_header_then_echo`]).
pub fn header_backend(id: u8) -> Arc<Backend> {
    Backend::start(id, report_header_then_echo())
}

/// `n` different loopback ports free right now (bound together, then let go) for a
/// program that takes only port numbers. Another process could take one in between.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// The path of a program, if it is installed (PATH, then /usr/sbin and /sbin).
pub fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
}

/// A real HAProxy or nginx, configured by the test, killed when dropped.
pub struct External {
    child: Child,
    dir: PathBuf,
    name: &'static str,
}

impl External {
    /// Writes `config` (with `{dir}` replaced by a scratch directory) and runs `binary`
    /// with `args(config path, dir)`, then waits until every address in `ready` accepts.
    pub fn start(
        name: &'static str,
        binary: &std::path::Path,
        config: &str,
        args: impl Fn(&str, &str) -> Vec<String>,
        ready: &[SocketAddr],
    ) -> External {
        let dir = std::env::temp_dir().join(format!(
            "tcplb-test-{}-{name}-{}",
            std::process::id(),
            ready.first().map_or(0, |a| a.port())
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let dir_text = dir.to_str().expect("utf-8").to_string();
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config.replace("{dir}", &dir_text)).expect("write config");
        let child = Command::new(binary)
            .args(args(path.to_str().expect("utf-8"), &dir_text))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut external = External { child, dir, name };
        for &addr in ready {
            wait_until(
                || TcpStream::connect(addr).is_ok() || !external.is_running(),
                || format!("{name} does not listen on {addr}"),
            );
            if !external.is_running() {
                let mut err = String::new();
                if let Some(mut e) = external.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{name} exited at start: {err}");
            }
        }
        external
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HAProxy, or `None` after printing why the test is skipped.
pub fn haproxy() -> Option<PathBuf> {
    let found = program("haproxy");
    if found.is_none() {
        eprintln!("SKIPPED: haproxy is not installed (scripts/setup installs it)");
    }
    found
}

/// nginx, or `None` after printing why the test is skipped.
pub fn nginx() -> Option<PathBuf> {
    let found = program("nginx");
    if found.is_none() {
        eprintln!("SKIPPED: nginx is not installed (scripts/setup installs nginx-light)");
    }
    found
}
