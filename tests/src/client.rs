use std::time::Duration;

use crate::cmd::{CmdOutput, Place, run_timeout};

const UDP_CLIENT_PY: &str = r#"
import sys, socket
addr, port, payload, sport = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
v6 = ":" in addr
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if sport:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if v6 else "0.0.0.0", sport))
s.settimeout(3)
s.sendto(payload, (addr, port))
try:
    data, _ = s.recvfrom(65535)
except socket.timeout:
    sys.stderr.write("timeout: no reply from %s:%d\n" % (addr, port))
    sys.exit(1)
sys.stdout.buffer.write(data)
"#;

/// `curl -s --max-time 5 ARGS...` (args: URL and any extra curl options).
/// `-g` lets an IPv6 URL (`http://[2001:db8::1]:80/`) through as it is.
/// stdout is the body; the exit code is curl's (28 = timeout, 7 = refused).
pub fn curl(place: impl Into<Place>, args: &[&str]) -> CmdOutput {
    let mut cmd = place.into().command("curl");
    cmd.args(["-g", "-s", "--max-time", "5"]).args(args);
    run_timeout(&mut cmd, Duration::from_secs(15))
}

/// GETs `url` from `place` via curl against a [`crate::Server::http`] and
/// returns the source "ip:port" the server saw, or `None` if curl failed.
pub fn http_source(place: impl Into<Place>, url: &str) -> Option<String> {
    let out = curl(place, &[url]);
    out.success().then(|| out.stdout.trim().to_string())
}

/// `ping -c 1 -W 2 ADDR` (ping picks the family from ADDR).
pub fn ping(place: impl Into<Place>, addr: &str) -> CmdOutput {
    let mut cmd = place.into().command("ping");
    cmd.args(["-c", "1", "-W", "2", addr]);
    run_timeout(&mut cmd, Duration::from_secs(10))
}

pub fn ping_ok(place: impl Into<Place>, addr: &str) -> bool {
    ping(place, addr).success()
}

/// Sends one UDP datagram `payload` to `addr:port` from `place` and waits up
/// to 3 s for one reply, written raw to stdout. Fails (exit 1) on timeout.
pub fn udp_request(place: impl Into<Place>, addr: &str, port: u16, payload: &str) -> CmdOutput {
    udp_request_from(place, 0, addr, port, payload)
}

/// As [`udp_request`], sending from local port `src_port` (0 = any).
pub fn udp_request_from(
    place: impl Into<Place>,
    src_port: u16,
    addr: &str,
    port: u16,
    payload: &str,
) -> CmdOutput {
    let mut cmd = place.into().command("python3");
    cmd.args([
        "-c",
        UDP_CLIENT_PY,
        addr,
        &port.to_string(),
        payload,
        &src_port.to_string(),
    ]);
    run_timeout(&mut cmd, Duration::from_secs(15))
}

/// One AF_INET6 exchange with `addr` `port`: `tcp` (an HTTP/1.0 GET),
/// `udp` (sendto/recvfrom) or `udp-connected` (connect, send, recvfrom).
/// Prints the peer address the socket reports (getpeername for the connected
/// modes, else recvfrom's), `ADDR PORT`, then the reply's body.
const IPV6_CLIENT_PY: &str = r#"
import socket, sys
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6, kind)
s.settimeout(5)
if mode == "udp":
    s.sendto(b"hello", (addr, port))
    body, peer = s.recvfrom(65535)
else:
    s.connect((addr, port))
    if mode == "tcp":
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        body = data.split(b"\r\n\r\n", 1)[1]
    else:
        s.send(b"hello")
        body, peer = s.recvfrom(65535)
        assert peer[:2] == s.getpeername()[:2], (peer, s.getpeername())
    peer = s.getpeername()
print("%s %d" % peer[:2], flush=True)
sys.stdout.buffer.write(body)
"#;

pub fn ipv6_client(place: impl Into<Place>, mode: &str, addr: &str, port: u16) -> CmdOutput {
    let mut cmd = place.into().command("python3");
    cmd.args(["-c", IPV6_CLIENT_PY, mode, addr, &port.to_string()]);
    run_timeout(&mut cmd, Duration::from_secs(15))
}

/// Asks a [`crate::Server::udp_echo`] at `addr:port` and returns the source
/// "ip:port" it saw, or `None` without a reply.
pub fn udp_source(place: impl Into<Place>, addr: &str, port: u16) -> Option<String> {
    let out = udp_request(place, addr, port, "hello");
    if !out.success() {
        return None;
    }
    out.stdout.lines().next().map(|l| l.trim().to_string())
}

/// `http://ADDR:PORT/`, with IPv6 addresses in brackets.
pub fn url(addr: &str, port: u16) -> String {
    match addr.contains(':') {
        true => format!("http://[{addr}]:{port}/"),
        false => format!("http://{addr}:{port}/"),
    }
}
