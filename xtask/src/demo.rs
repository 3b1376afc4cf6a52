//! `cargo xtask demo`: netpath in throw-away namespaces, narrated.
//!
//! The demo is a list of [`Step`]s; add one by pushing to the vector in
//! [`steps`]. Everything runs in namespaces created here (a "host" netns with
//! an uplink veth to an "outside" netns); this machine's own interfaces are
//! never touched. [`Demo`]'s `Drop` cleans up, also after Ctrl-C.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};

use netpath_tests::{cgroup2_mount, kill_netns_processes};

use crate::util::{describe, output_ok, short_suffix, status_ok};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const UPLINK: &str = "up0";
const OUTSIDE_IF: &str = "out0";
const HOST_ADDR: &str = "198.18.0.1/24";
const OUTSIDE_ADDR: &str = "198.18.0.2/24";
const OUTSIDE_IP: &str = "198.18.0.2";
/// The demo's second network, `back`.
const BACK_SUBNET: &str = "10.78.9.0/24";
const HOST_IP: &str = "198.18.0.1";
/// The lab's IPv6 (documentation addresses): the uplink's global address,
/// which netpath masquerades to (NAT66) and publishes on.
const HOST_ADDR6: &str = "2001:db8::1/64";
const OUTSIDE_ADDR6: &str = "2001:db8::2/64";
const HOST_IP6: &str = "2001:db8::1";
const OUTSIDE_IP6: &str = "2001:db8::2";
const WEB_PORT: &str = "8001";

/// A tiny HTTP server (the seed uses `python3 -m http.server`) whose answer
/// names the client's address, so each step shows which source arrived. It
/// prints READY once bound: the demo waits for that line, not for a timer.
const HTTP_PY: &str = r#"
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = self.client_address[:2]
        host = host.removeprefix("::ffff:")
        body = ("hello from %s, you are %s port %d\n" % (sys.argv[2], host, port)).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class DualStack(http.server.HTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
s = DualStack(("::", int(sys.argv[1])), H)
print("READY", flush=True)
s.serve_forever()
"#;

type StepFn = Box<dyn Fn(&mut Demo) -> Result<()>>;

/// One narrated step: a heading, the seed (`ip`/`iptables`) commands it
/// replaces, and what it does.
pub struct Step {
    pub title: String,
    pub replaces: Option<String>,
    pub run: StepFn,
}

fn step(
    title: impl Into<String>,
    replaces: Option<String>,
    run: impl Fn(&mut Demo) -> Result<()> + 'static,
) -> Step {
    Step {
        title: title.into(),
        replaces,
        run: Box::new(run),
    }
}

/// Names and what has been created so far (for cleanup).
pub struct Demo {
    bin: PathBuf,
    pub instance: String,
    pub host: String,
    pub outside: String,
    pub cgroup: PathBuf,
    pub containers: Vec<String>,
    netns_created: Vec<String>,
    cgroup_created: bool,
    up_ran: bool,
    servers: Vec<Child>,
}

impl Demo {
    fn new(bin: &Path) -> Result<Self> {
        let sfx = short_suffix();
        let cg2 = cgroup2_mount().context("no cgroup2 mount in /proc/mounts")?;
        Ok(Self {
            bin: bin.to_path_buf(),
            instance: format!("demo{sfx}"),
            host: format!("npdemo-host-{sfx}"),
            outside: format!("npdemo-out-{sfx}"),
            cgroup: cg2.join(format!("netpath-demo-{sfx}")),
            containers: vec![
                format!("web{sfx}"),
                format!("db{sfx}"),
                format!("cache{sfx}"),
            ],
            netns_created: Vec::new(),
            cgroup_created: false,
            up_ran: false,
            servers: Vec::new(),
        })
    }

    /// Prints `$ CMD` and runs it with the terminal as stdout/stderr.
    fn sh(&self, cmd: &mut Command) -> Result<()> {
        println!("   $ {}", describe(cmd));
        status_ok(cmd)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        self.sh(Command::new("ip").args(args))
    }

    fn netns_add(&mut self, name: &str) -> Result<()> {
        self.ip(&["netns", "add", name])?;
        self.netns_created.push(name.to_string());
        self.ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// netpath in the host netns, the way a user runs it there.
    fn netpath(&mut self, args: &[&str]) -> Result<()> {
        println!(
            "   $ ip netns exec {} netpath --instance {} {}",
            self.host,
            self.instance,
            args.join(" ")
        );
        status_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.host])
                .arg(&self.bin)
                .arg("--instance")
                .arg(&self.instance)
                .args(args),
        )
    }

    /// Starts the HTTP server in netns `ns` and waits until it has bound.
    fn serve(&mut self, ns: &str, port: &str, name: &str) -> Result<()> {
        println!("   $ ip netns exec {ns} python3 -m http.server {port} &");
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "python3", "-u", "-c", HTTP_PY, port, name,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting python3")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        self.servers.push(child);
        if line.trim() != "READY" {
            bail!("the HTTP server in {ns} did not start");
        }
        Ok(())
    }

    /// curl from netns `ns`; `cgroup`: run inside the demo's cgroup, where
    /// netpath's socket hooks act (a host process).
    fn curl(&self, ns: &str, url: &str, cgroup: bool) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            ns,
            "curl",
            "-g",
            "-s",
            "--max-time",
            "5",
            url,
        ]);
        if cgroup {
            let procs = self.cgroup.join("cgroup.procs");
            // SAFETY: between fork and exec only a write(2) of our own pid.
            unsafe {
                cmd.pre_exec(move || std::fs::write(&procs, b"0"));
            }
        }
        self.sh(&mut cmd)
    }

    fn container(&self, i: usize) -> Result<&str> {
        self.containers
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no container #{i}"))
    }

    /// The IPv4 address on `eth0` in container `name`.
    fn container_ip(&self, name: &str) -> Result<String> {
        let ns = format!("np-{name}");
        let out = output_ok(
            Command::new("ip").args(["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"]),
        )?;
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no IPv4 address on eth0 in {ns}: {out:?}"))
    }

    /// The default gateway of container `name`.
    fn container_gateway(&self, name: &str) -> Result<String> {
        let ns = format!("np-{name}");
        let out =
            output_ok(Command::new("ip").args(["-n", &ns, "-4", "route", "show", "default"]))?;
        out.split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no default route in {ns}: {out:?}"))
    }

    fn ping_from(&self, name: &str, addr: &str) -> Result<()> {
        let ns = format!("np-{name}");
        self.sh(Command::new("ip").args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "2", addr]))
    }

    /// Like `ping_from`, but the ping must fail.
    fn ping_refused(&self, name: &str, addr: &str) -> Result<()> {
        match self.ping_from(name, addr) {
            Ok(()) => bail!("{name} reached {addr}, which it must not"),
            Err(_) => {
                println!("   (no answer, as it should be)");
                Ok(())
            }
        }
    }

    fn cleanup(&mut self) {
        println!("\n== cleanup");
        for mut server in self.servers.drain(..) {
            let _ = server.kill();
            let _ = server.wait();
        }
        if self.up_ran {
            println!(
                "   replaces: ip link del np0; ip netns del np-*; iptables -t nat -D POSTROUTING ..."
            );
            if let Err(e) = self.netpath(&["down"]) {
                eprintln!("   warning: netpath down: {e:#}");
            }
            self.up_ran = false;
        }
        // Whatever `down` left: processes in our namespaces, the namespaces.
        let mut all: Vec<String> = self.containers.iter().map(|c| format!("np-{c}")).collect();
        all.extend(self.netns_created.drain(..).rev());
        for ns in all {
            if Path::new("/run/netns").join(&ns).exists() {
                kill_netns_processes(&ns);
                if let Err(e) = self.ip(&["netns", "del", &ns]) {
                    eprintln!("   warning: {e:#}");
                }
            }
        }
        if self.cgroup_created {
            let procs =
                std::fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs
                .lines()
                .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
            {
                // SAFETY: kill(2); only processes netpath put in our cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            println!("   $ rmdir {}", self.cgroup.display());
            if let Err(e) = std::fs::remove_dir(&self.cgroup) {
                eprintln!("   warning: rmdir {}: {e}", self.cgroup.display());
            }
            self.cgroup_created = false;
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The demo, in order. Later steps (NAT, published ports) go at the end.
pub fn steps(d: &Demo) -> Vec<Step> {
    let (web, db) = (d.containers[0].clone(), d.containers[1].clone());
    vec![
        step(
            format!("lab: netns {} plays the host, {} the outside world", d.host, d.outside),
            None,
            |d| {
                let (h, o) = (d.host.clone(), d.outside.clone());
                d.netns_add(&h)?;
                d.netns_add(&o)
            },
        ),
        step(
            format!("lab: uplink veth {UPLINK} ({HOST_ADDR}, {HOST_ADDR6}) <-> {OUTSIDE_IF} ({OUTSIDE_ADDR}, {OUTSIDE_ADDR6}), default routes via the outside"),
            None,
            |d| {
                let (h, o) = (d.host.as_str(), d.outside.as_str());
                d.ip(&["-n", h, "link", "add", UPLINK, "type", "veth", "peer", "name", OUTSIDE_IF, "netns", o])?;
                d.ip(&["-n", h, "addr", "add", HOST_ADDR, "dev", UPLINK])?;
                d.ip(&["-n", h, "addr", "add", HOST_ADDR6, "dev", UPLINK, "nodad"])?;
                d.ip(&["-n", h, "link", "set", UPLINK, "up"])?;
                d.ip(&["-n", o, "addr", "add", OUTSIDE_ADDR, "dev", OUTSIDE_IF])?;
                d.ip(&["-n", o, "addr", "add", OUTSIDE_ADDR6, "dev", OUTSIDE_IF, "nodad"])?;
                d.ip(&["-n", o, "link", "set", OUTSIDE_IF, "up"])?;
                d.ip(&["-n", h, "route", "add", "default", "via", OUTSIDE_IP])?;
                d.ip(&["-n", h, "-6", "route", "add", "default", "via", OUTSIDE_IP6, "dev", UPLINK])
            },
        ),
        step(
            "lab: a cgroup2 directory for netpath's socket hooks (never the root cgroup)",
            None,
            |d| {
                println!("   $ mkdir {}", d.cgroup.display());
                std::fs::create_dir(&d.cgroup).with_context(|| format!("mkdir {}", d.cgroup.display()))?;
                d.cgroup_created = true;
                Ok(())
            },
        ),
        step(
            "netpath up: bridge, gateway, eBPF datapath; the agent detaches",
            Some(
                "ip link add np0 type bridge; ip addr add 10.77.0.1/16 dev np0; ip link set np0 up;\n             \
                 sysctl -w net.ipv4.ip_forward=1; iptables -t nat -A POSTROUTING -s 10.77.0.0/16 ! -o np0 -j MASQUERADE"
                    .into(),
            ),
            |d| {
                let cg = d.cgroup.to_string_lossy().into_owned();
                d.up_ran = true;
                d.netpath(&["up", "--detach", "--uplink", UPLINK, "--cgroup", &cg])
            },
        ),
        container_step(&web),
        container_step(&db),
        step("netpath container ls", None, |d| d.netpath(&["container", "ls"])),
        step(
            format!("{web} pings {db} (container to container)"),
            None,
            |d| {
                let (a, b) = (d.container(0)?.to_string(), d.container(1)?.to_string());
                let ip = d.container_ip(&b)?;
                d.ping_from(&a, &ip)
            },
        ),
        step(
            format!("{db} pings its gateway (the bridge address)"),
            None,
            |d| {
                let b = d.container(1)?.to_string();
                let gw = d.container_gateway(&b)?;
                d.ping_from(&b, &gw)
            },
        ),
        step("netpath status", None, |d| d.netpath(&["status"])),
        step(
            format!("{web} serves HTTP on {WEB_PORT}; the outside runs a server too"),
            None,
            |d| {
                let web = format!("np-{}", d.container(0)?);
                d.serve(&web, WEB_PORT, "web")?;
                let out = d.outside.clone();
                d.serve(&out, "80", "the outside")
            },
        ),
        step(
            format!("{web} reaches the outside: masqueraded to the host's {HOST_IP}"),
            Some("iptables -t nat -A POSTROUTING -s 10.77.0.0/16 ! -o np0 -j MASQUERADE".into()),
            |d| {
                let web = format!("np-{}", d.container(0)?);
                d.curl(&web, &format!("http://{OUTSIDE_IP}:80/"), false)?;
                d.ping_from(d.container(0)?, OUTSIDE_IP)
            },
        ),
        step(
            format!("netpath publish add {web} {WEB_PORT}:{WEB_PORT}"),
            Some(format!(
                "iptables -t nat -A PREROUTING -p tcp --dport {WEB_PORT} -j DNAT --to-destination 10.77.0.2:{WEB_PORT}"
            )),
            |d| {
                let web = d.container(0)?.to_string();
                d.netpath(&["publish", "add", &web, &format!("{WEB_PORT}:{WEB_PORT}")])?;
                d.netpath(&["publish", "ls"])
            },
        ),
        step(
            format!("the outside reaches {HOST_IP}:{WEB_PORT}; the container sees the client's real address"),
            None,
            |d| {
                let out = d.outside.clone();
                d.curl(&out, &format!("http://{HOST_IP}:{WEB_PORT}/"), false)
            },
        ),
        step(
            format!("the host itself reaches {HOST_IP}:{WEB_PORT} and 127.0.0.1:{WEB_PORT} (socket hooks)"),
            Some(format!(
                "iptables -t nat -A OUTPUT -p tcp --dport {WEB_PORT} -j DNAT --to-destination 10.77.0.2:{WEB_PORT}"
            )),
            |d| {
                let host = d.host.clone();
                d.curl(&host, &format!("http://{HOST_IP}:{WEB_PORT}/"), true)?;
                d.curl(&host, &format!("http://127.0.0.1:{WEB_PORT}/"), true)
            },
        ),
        step(
            format!("{db} reaches {HOST_IP}:{WEB_PORT} (hairpin, SNAT to the gateway)"),
            None,
            |d| {
                let db = format!("np-{}", d.container(1)?);
                d.curl(&db, &format!("http://{HOST_IP}:{WEB_PORT}/"), false)
            },
        ),
        step(
            format!(
                "dual stack: {web} reaches the outside over IPv6 (NAT66 to {HOST_IP6}); the outside reaches \
                 [{HOST_IP6}]:{WEB_PORT}, the host [::1]:{WEB_PORT}"
            ),
            Some(format!(
                "ip6tables -t nat -A POSTROUTING -s <subnet6> ! -o np0 -j MASQUERADE; ip6tables -t nat -A PREROUTING \
                 -p tcp --dport {WEB_PORT} -j DNAT --to-destination [<web's IPv6>]:{WEB_PORT}; [::1] needs docker-proxy"
            )),
            |d| {
                let web = format!("np-{}", d.container(0)?);
                d.curl(&web, &format!("http://[{OUTSIDE_IP6}]:80/"), false)?;
                let (out, host) = (d.outside.clone(), d.host.clone());
                d.curl(&out, &format!("http://[{HOST_IP6}]:{WEB_PORT}/"), false)?;
                d.curl(&host, &format!("http://[::1]:{WEB_PORT}/"), true)
            },
        ),
        step(
            format!("netpath network create back --internal; netpath container add {} --network back", d.containers[2]),
            Some(
                "ip link add br-back type bridge; ...; iptables -I DOCKER-ISOLATION-STAGE-1 -i br-back ! -o br-back -j DROP; ..."
                    .into(),
            ),
            |d| {
                let cache = d.container(2)?.to_string();
                d.netpath(&["network", "create", "back", "--internal", "--subnet", BACK_SUBNET])?;
                d.netpath(&["container", "add", &cache, "--network", "back"])?;
                d.netpath(&["network", "ls"])
            },
        ),
        step(
            "networks are isolated: web can't reach cache; cache (internal) can't reach the outside",
            None,
            |d| {
                let (web, cache) = (d.container(0)?.to_string(), d.container(2)?.to_string());
                let ip = d.container_ip(&cache)?;
                d.ping_refused(&web, &ip)?;
                d.ping_refused(&cache, OUTSIDE_IP)
            },
        ),
        step("netpath flows: the conntrack table, read from the pinned map", None, |d| {
            d.netpath(&["flows"])
        }),
        step("netpath stats: which path each packet took", None, |d| d.netpath(&["stats"])),
        step("no iptables rule was involved", None, |d| {
            let host = d.host.clone();
            d.sh(Command::new("ip").args(["netns", "exec", &host, "iptables-save", "-t", "nat"]))
        }),
    ]
}

fn container_step(name: &str) -> Step {
    let n = name.to_string();
    step(
        format!("netpath container add {name}"),
        Some(format!(
            "ip netns add np-{name}; ip link add veth-{name} type veth peer name eth0 netns np-{name};\n             \
             ip link set veth-{name} master np0 up; ip -n np-{name} addr add 10.77.0.N/16 dev eth0;\n             \
             ip -n np-{name} link set eth0 up; ip -n np-{name} route add default via 10.77.0.1"
        )),
        move |d| d.netpath(&["container", "add", &n]),
    )
}

pub fn run(bin: &Path) -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\nxtask demo: interrupted, cleaning up");
    })
    .context("installing the Ctrl-C handler")?;

    let mut demo = Demo::new(bin)?;
    let steps = steps(&demo);
    let total = steps.len();
    let mut failed = None;
    for (i, s) in steps.iter().enumerate() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            failed = Some(anyhow!("interrupted before step {}", i + 1));
            break;
        }
        println!("\n== [{}/{total}] {}", i + 1, s.title);
        if let Some(r) = &s.replaces {
            println!("   replaces: {r}");
        }
        if let Err(e) = (s.run)(&mut demo) {
            failed = Some(e.context(format!("step {}/{total} ({})", i + 1, s.title)));
            break;
        }
    }
    drop(demo);
    if INTERRUPTED.load(Ordering::SeqCst) && failed.is_none() {
        failed = Some(anyhow!("interrupted"));
    }
    match failed {
        None => {
            println!("\nxtask demo: all {total} steps ok, cleaned up");
            Ok(())
        }
        Some(e) => bail!("demo stopped (cleaned up): {e:#}"),
    }
}
