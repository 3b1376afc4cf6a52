use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::{Place, describe};

/// How long a server may take to print its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// GET: body is the client's "ip:port" (or `x` * N for `/size/N`).
/// POST: body is "ip:port LEN" where LEN is the number of bytes received.
/// Every server binds IPv6 when its address has a colon (`::`, a
/// container's IPv6 address), IPv4 otherwise.
const HTTP_PY: &str = r#"
import sys, socket, socketserver, http.server
host, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def src(self):
        s = "%s:%d" % self.client_address[:2]
        # One write per line: the handler threads must not interleave.
        sys.stdout.write("CLIENT %s\n" % s)
        return s
    def do_GET(self):
        s = self.src()
        if self.path.startswith("/size/"):
            self.reply(b"x" * int(self.path[6:]))
        else:
            self.reply(s.encode())
    def do_POST(self):
        s = self.src()
        left, n = int(self.headers.get("Content-Length", "0")), 0
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            n += len(chunk); left -= len(chunk)
        self.reply(("%s %d" % (s, n)).encode())
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    allow_reuse_address = True
    daemon_threads = True
s = S((host, port), H)
print("READY %d" % s.server_address[1], flush=True)
s.serve_forever()
"#;

/// Replies to each datagram with b"ip:port\n" + the datagram.
const UDP_PY: &str = r#"
import sys, socket
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
print("READY %d" % s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(65535)
    src = "%s:%d" % addr[:2]
    print("CLIENT " + src, flush=True)
    s.sendto(src.encode() + b"\n" + data, addr)
"#;

/// On connect sends b"ip:port\n", then echoes everything until EOF.
const TCP_PY: &str = r#"
import sys, socket, socketserver
host, port = sys.argv[1], int(sys.argv[2])
class H(socketserver.BaseRequestHandler):
    def handle(self):
        src = "%s:%d" % self.client_address[:2]
        # One write per line: the handler threads must not interleave.
        sys.stdout.write("CLIENT %s\n" % src)
        self.request.sendall(src.encode() + b"\n")
        while True:
            d = self.request.recv(65536)
            if not d:
                break
            self.request.sendall(d)
class S(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    allow_reuse_address = True
    daemon_threads = True
s = S((host, port), H)
print("READY %d" % s.server_address[1], flush=True)
s.serve_forever()
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// HTTP/1.0; GET answers the client's "ip:port", `/size/N` N bytes,
    /// POST "ip:port LEN".
    Http,
    /// UDP; answers b"ip:port\n" + the datagram.
    UdpEcho,
    /// TCP; sends b"ip:port\n" on connect, then echoes.
    TcpEcho,
}

type Clients = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A python3 server in a namespace. Started servers have bound their socket
/// (they print `READY <port>` after bind and we read that line). Every
/// client's "ip:port" is recorded. Killed by pid on drop.
pub struct Server {
    child: Child,
    port: u16,
    kind: ServerKind,
    place: Place,
    clients: Clients,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// HTTP server bound to `bind:port` (port 0 = any; see [`Server::port`]).
    #[track_caller]
    pub fn http(place: impl Into<Place>, bind: &str, port: u16) -> Self {
        Self::start(place, ServerKind::Http, bind, port)
    }

    #[track_caller]
    pub fn udp_echo(place: impl Into<Place>, bind: &str, port: u16) -> Self {
        Self::start(place, ServerKind::UdpEcho, bind, port)
    }

    #[track_caller]
    pub fn tcp_echo(place: impl Into<Place>, bind: &str, port: u16) -> Self {
        Self::start(place, ServerKind::TcpEcho, bind, port)
    }

    #[track_caller]
    pub fn start(place: impl Into<Place>, kind: ServerKind, bind: &str, port: u16) -> Self {
        let place = place.into();
        Self::try_start(place.clone(), kind, bind, port).unwrap_or_else(|e| {
            panic!("starting {kind:?} server on {bind}:{port} in {place:?}: {e:#}")
        })
    }

    pub fn try_start(
        place: impl Into<Place>,
        kind: ServerKind,
        bind: &str,
        port: u16,
    ) -> anyhow::Result<Self> {
        let place = place.into();
        let script = match kind {
            ServerKind::Http => HTTP_PY,
            ServerKind::UdpEcho => UDP_PY,
            ServerKind::TcpEcho => TCP_PY,
        };
        let mut cmd = place.command("python3");
        cmd.args(["-u", "-c", script, bind, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cmdline = describe(&cmd);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "spawning python3 via {}",
                cmdline.lines().next().unwrap_or("")
            )
        })?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut stderr_pipe = child.stderr.take().context("piped stderr")?;
        let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
        {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stderr_pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut b) = buf.lock() {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            });
        }
        let clients: Clients = Arc::default();
        let (ready_tx, ready_rx) = mpsc::channel::<u16>();
        {
            let clients = clients.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(p) = line.strip_prefix("READY ") {
                        let _ = ready_tx.send(p.trim().parse().unwrap_or(0));
                    } else if let Some(c) = line.strip_prefix("CLIENT ") {
                        let (lock, cv) = &*clients;
                        if let Ok(mut v) = lock.lock() {
                            v.push(c.trim().to_string());
                        }
                        cv.notify_all();
                    }
                }
            });
        }
        let mut server = Self {
            child,
            port,
            kind,
            place,
            clients,
            stderr,
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(p) if p != 0 => {
                server.port = p;
                Ok(server)
            }
            Ok(_) => bail!("server printed a bad READY line"),
            Err(e) => {
                let _ = server.child.kill();
                let _ = server.child.wait();
                let err = String::from_utf8_lossy(
                    &server.stderr.lock().map(|b| b.clone()).unwrap_or_default(),
                )
                .into_owned();
                bail!("server not ready ({e}): {cmdline}\n--- stderr\n{err}")
            }
        }
    }

    /// The bound port (the real one when started with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    pub fn place(&self) -> &Place {
        &self.place
    }

    /// "ip:port" of every client seen so far, in order.
    pub fn clients(&self) -> Vec<String> {
        self.clients.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` clients were recorded (the server logs a
    /// client before it answers, but the log line is read asynchronously),
    /// or `timeout` passed; returns the clients seen.
    pub fn wait_clients(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.clients;
        let Ok(mut v) = lock.lock() else {
            return Vec::new();
        };
        while v.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            v = match cv.wait_timeout(v, left) {
                Ok((v, _)) => v,
                Err(_) => return Vec::new(),
            };
        }
        v.clone()
    }

    /// The most recent client's IP (without port), waiting up to 5 s for one.
    pub fn last_client_ip(&self) -> Option<String> {
        let v = self.wait_clients(1, Duration::from_secs(5));
        let last = v.last()?;
        last.rsplit_once(':').map(|(ip, _)| ip.to_string())
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().map(|b| b.clone()).unwrap_or_default())
            .into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
