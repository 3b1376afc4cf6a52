//! The CNI plugin, `netpath-cni` (CNI spec 1.1; results in the 1.0 format):
//! how Podman, containerd and Kubernetes put their containers on a netpath
//! instance. ADD is `container attach` of the runtime's netns (the same
//! code, [`container::add`]), named after the container ID and interface;
//! DEL and GC detach by those; CHECK compares what is live with the record;
//! STATUS says whether the instance can take containers.
//!
//! The network configuration names the instance (`"instance"`, default
//! `default`), which `netpath up` must have brought up, and may name one of
//! its networks (`"netpathNetwork"`, default `bridge`; see `network
//! create`). Port mappings come
//! from the `portMappings` capability. Addresses come from netpath's own
//! IPAM: a config with an `ipam` section is refused.
//!
//! Every answer goes to stdout: the result of ADD, the versions of VERSION,
//! nothing for the others, or on failure the CNI error object (and a
//! non-zero exit status). Logs go to stderr.
use std::{collections::HashSet, io::Read, net::IpAddr, path::PathBuf, process::ExitCode};

use netpath_common::Proto;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    config::DEFAULT_INSTANCE,
    container::{self, AddRequest, ContainerError},
    directories::Instance,
    ipam, netns,
    publish::{self, HostPort, Mapping},
    state::{self, Mode, Origin, State},
    tables::Tables,
    topology,
};

/// The versions VERSION lists; results are written in the 1.0 format (the
/// same in 1.1), with the `version` field of IP entries for 0.x.
const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version an answer carries when the request's is not known.
const LATEST_VERSION: &str = "1.1.0";

/// The spec's error codes, and netpath's own (100 and up).
mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// netpath could not build, check or remove the attachment.
    pub const FAILED: u32 = 100;
}

/// A CNI error: printed as `{cniVersion, code, msg, details}`.
#[derive(Debug)]
struct CniError {
    code: u32,
    msg: String,
    details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

type Result<T> = std::result::Result<T, CniError>;

fn failed(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::FAILED, e.to_string())
}

/// The network configuration on stdin (the fields netpath reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    cni_version: String,
    name: String,
    #[serde(default)]
    instance: Option<String>,
    /// The instance's network the containers go on (`network create`);
    /// the instance's first, `bridge`, when absent.
    #[serde(default)]
    netpath_network: Option<String>,
    #[serde(default)]
    ipam: Option<Value>,
    /// Outside sources (addresses or CIDRs) that may reach the port
    /// mappings; empty: all (`--allow` of `publish add`).
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Vec<ValidAttachment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
}

/// One entry of the `portMappings` capability (Podman expands ranges).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The CNI_* variables, empty ones as absent.
struct Env {
    command: String,
    container_id: Option<String>,
    netns: Option<PathBuf>,
    ifname: Option<String>,
}

impl Env {
    fn read() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Self {
            command: var("CNI_COMMAND")
                .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname: var("CNI_IFNAME"),
        })
    }

    fn container_id(&self) -> Result<&str> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_CONTAINERID is not set"))?;
        let ok = id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("invalid CNI_CONTAINERID {id:?}"),
            ));
        }
        Ok(id)
    }

    fn ifname(&self) -> Result<&str> {
        let name = self
            .ifname
            .as_deref()
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_IFNAME is not set"))?;
        let ok = name.len() <= 15
            && name != "."
            && name != ".."
            && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
        if !ok {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("invalid CNI_IFNAME {name:?}"),
            ));
        }
        Ok(name)
    }

    fn netns(&self) -> Result<&PathBuf> {
        self.netns
            .as_ref()
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))
    }
}

/// The netpath container name of an attachment: `cni-` and a hash of the
/// container ID and interface, so the host veth `np-cni-XXXXXXXX` fits 15
/// bytes. Attachments are found again by their recorded ID and interface,
/// never by this name.
pub fn attachment_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    format!("cni-{hash:08x}")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot start a runtime: {e}")))
}

/// `netpath-cni`: reads env and stdin, answers on stdout.
pub fn main() -> ExitCode {
    let mut input = String::new();
    let read = std::io::stdin().read_to_string(&mut input);
    // Errors carry the request's version when it has a known one.
    let version = serde_json::from_str::<Value>(&input)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    let answer = match read {
        Ok(_) => run(&input),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot read stdin: {e}"),
        )),
    };
    match answer {
        Ok(Some(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let error = json!({
                "cniVersion": version,
                "code": e.code,
                "msg": e.msg,
                "details": e.details,
            });
            println!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn run(input: &str) -> Result<Option<Value>> {
    // Must come before any thread or runtime exists: see its doc comment.
    netns::join_outer_mount_namespace_if_private()
        .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?;
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let env = Env::read()?;
    if env.command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": LATEST_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf: NetConf = serde_json::from_str(input).map_err(|e| {
        CniError::new(code::DECODE, "cannot decode the network configuration")
            .details(e.to_string())
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} is not supported: use one of {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if conf.ipam.as_ref().is_some_and(|ipam| !ipam.is_null()) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "unsupported field ipam: netpath assigns the addresses itself, remove the ipam section",
        ));
    }
    let instance = Instance::new(conf.instance.as_deref().unwrap_or(DEFAULT_INSTANCE))
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    match env.command.as_str() {
        "ADD" => add(&conf, &env, &instance).map(Some),
        "DEL" => del(&env, &instance).map(|()| None),
        "CHECK" => check(&conf, &env, &instance).map(|()| None),
        "STATUS" => status(&instance).map(|()| None),
        "GC" => gc(&conf, &instance).map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}

/// The instance's state, or code `code` saying to run `netpath up`.
fn up_state(instance: &Instance, code: u32) -> Result<State> {
    match state::load(instance) {
        Ok(Some(state)) => Ok(state),
        Ok(None) => Err(CniError::new(code, instance.not_up().to_string())),
        Err(e) => Err(CniError::new(code, e.to_string())),
    }
}

fn port_mappings(mappings: &[PortMapping]) -> Result<Vec<Mapping>> {
    let bad = |what: String| CniError::new(code::INVALID_CONFIG, what);
    mappings
        .iter()
        .map(|m| {
            let proto = match m
                .protocol
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("" | "tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                Some(other) => {
                    return Err(bad(format!(
                        "portMappings: protocol {other} is not supported (tcp or udp)"
                    )));
                }
            };
            let ip = match m.host_ip.as_deref() {
                None | Some("") => None,
                // 0.0.0.0 and :: are every address of their family, as
                // in `-p`.
                Some(text) => match text.parse::<IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        return Err(bad(format!(
                            "portMappings: hostIP {text} is not an IP address"
                        )));
                    }
                },
            };
            if m.host_port == 0 || m.container_port == 0 {
                return Err(bad("portMappings: ports must not be 0".to_owned()));
            }
            Ok(Mapping {
                host: HostPort {
                    ip,
                    port: m.host_port,
                    proto,
                },
                container_port: m.container_port,
            })
        })
        .collect()
}

/// The instance's network the configuration puts containers on.
fn network_name(conf: &NetConf) -> &str {
    conf.netpath_network
        .as_deref()
        .unwrap_or(state::DEFAULT_NETWORK)
}

fn add(conf: &NetConf, env: &Env, instance: &Instance) -> Result<Value> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns = env.netns()?;
    up_state(instance, code::TRY_AGAIN_LATER)?;
    let request = AddRequest {
        name: attachment_name(container_id, ifname),
        mode: Mode::Bridge,
        ip: None,
        publish: port_mappings(&conf.runtime_config.port_mappings)?,
        allow: publish::parse_allow(&conf.allow)
            .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("allow: {e}")))?,
        origin: Origin::Cni {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            netns: netns.clone(),
            network: conf.name.clone(),
        },
        network: network_name(conf).to_owned(),
    };
    let runtime = runtime()?;
    let (view, host_mac) = runtime.block_on(async {
        let view = container::add(instance, request)
            .await
            .map_err(|e| match e {
                ContainerError::Duplicate(_) => CniError::new(
                    code::FAILED,
                    format!("container {container_id} already has {ifname} on this network: DEL it first"),
                ),
                e => failed(e),
            })?;
        let host = topology::connect().map_err(failed)?;
        let veth = view.host_veth.clone().unwrap_or_default();
        let link = topology::find_link(&host, &veth).await.map_err(failed)?;
        let host_mac = link.as_ref().and_then(topology::link_mac);
        Ok::<_, CniError>((view, host_mac))
    })?;
    let state = up_state(instance, code::TRY_AGAIN_LATER)?;
    let ip = view
        .ip
        .ok_or_else(|| failed("the attachment got no address"))?;
    let network = state
        .network(network_name(conf))
        .ok_or_else(|| failed("the network went away during ADD"))?;
    let mut addresses = vec![(
        "4",
        json!({
            "address": format!("{ip}/{}", network.subnet.prefix_len()),
            "gateway": network.gateway,
            "interface": 1,
        }),
    )];
    let mut routes = vec![json!({ "dst": "0.0.0.0/0", "gw": network.gateway })];
    if let (Some(ip6), Some(subnet6), Some(gateway6)) =
        (view.ip6, network.subnet6, network.gateway6)
    {
        addresses.push((
            "6",
            json!({
                "address": format!("{ip6}/{}", subnet6.prefix_len()),
                "gateway": gateway6,
                "interface": 1,
            }),
        ));
        routes.push(json!({ "dst": "::/0", "gw": gateway6 }));
    }
    let ips: Vec<Value> = addresses
        .into_iter()
        .map(|(version, mut address)| {
            if conf.cni_version.starts_with("0.") {
                address["version"] = json!(version);
            }
            address
        })
        .collect();
    Ok(json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {
                "name": view.host_veth,
                "mac": host_mac.as_ref().map(topology::format_mac),
            },
            {
                "name": ifname,
                "mac": view.mac,
                "sandbox": netns,
            },
        ],
        "ips": ips,
        // An internal network has no way out, and no default route.
        "routes": if network.internal {
            json!([])
        } else {
            json!(routes)
        },
        "dns": {},
    }))
}

fn del(env: &Env, instance: &Instance) -> Result<()> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    container::remove_cni(instance, container_id, ifname).map_err(failed)
}

fn gc(conf: &NetConf, instance: &Instance) -> Result<()> {
    let valid: HashSet<(&str, &str)> = conf
        .valid_attachments
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    container::gc_cni(instance, &conf.name, |id, ifname| {
        valid.contains(&(id, ifname))
    })
    .map_err(failed)
}

/// STATUS: the instance is up and has an address left.
fn status(instance: &Instance) -> Result<()> {
    let state = up_state(instance, code::NOT_AVAILABLE)?;
    Tables::open(instance).map_err(|e| CniError::new(code::NOT_AVAILABLE, e.to_string()))?;
    let used = state
        .containers
        .values()
        .filter_map(|c| c.ip.map(|ip| (ip, c.name.as_str())));
    ipam::allocate(state.subnet, used, None)
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.to_string()))?;
    Ok(())
}

/// CHECK: the attachment is recorded, and its interface, address, default
/// route, host veth, endpoint and published ports are all live.
fn check(conf: &NetConf, env: &Env, instance: &Instance) -> Result<()> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns = env.netns()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the configuration",
        )
    })?;
    let state = up_state(instance, code::TRY_AGAIN_LATER)?;
    let record = state
        .containers
        .values()
        .find(|r| {
            matches!(&r.origin, Origin::Cni { container_id: id, ifname: name, .. }
                if id == container_id && name == ifname)
        })
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("container {container_id} has no {ifname} on this network"),
            )
        })?;
    let ip = record
        .ip
        .ok_or_else(|| failed("the attachment has no address"))?;
    let mut problems = Vec::new();
    let address = format!("{ip}/{}", state.subnet.prefix_len());
    let in_prev = prev["ips"]
        .as_array()
        .is_some_and(|ips| ips.iter().any(|e| e["address"] == address.as_str()));
    if !in_prev {
        problems.push(format!("prevResult does not hold {address}"));
    }
    let runtime = runtime()?;
    runtime.block_on(async {
        let inside = topology::connect_in(netns).map_err(failed)?;
        match topology::find_link(&inside, ifname).await.map_err(failed)? {
            None => problems.push(format!("{ifname} is gone from {}", netns.display())),
            Some(link) => {
                let index = link.header.index;
                if topology::primary_ipv4(&inside, index).await.ok().flatten() != Some(ip) {
                    problems.push(format!("{ifname} does not have {ip}"));
                }
                if let Some(ip6) = record.ip6
                    && topology::global_ipv6(&inside, index).await.ok().flatten() != Some(ip6)
                {
                    problems.push(format!("{ifname} does not have {ip6}"));
                }
                if topology::default_route_ifindex(&inside).await.ok() != Some(index) {
                    problems.push(format!("the default route is not via {ifname}"));
                }
            }
        }
        let host = topology::connect().map_err(failed)?;
        let veth = record.host_veth.clone().unwrap_or_default();
        if topology::find_link(&host, &veth)
            .await
            .map_err(failed)?
            .is_none()
        {
            problems.push(format!("host veth {veth} is gone"));
        }
        Ok::<_, CniError>(())
    })?;
    let tables =
        Tables::open(instance).map_err(|e| CniError::new(code::TRY_AGAIN_LATER, e.to_string()))?;
    if !tables.has_endpoint(ip).map_err(failed)? {
        problems.push(format!("the datapath has no endpoint for {ip}"));
    }
    let ports = tables.ports().map_err(failed)?;
    for mapping in port_mappings(&conf.runtime_config.port_mappings)? {
        // The IPv4 side, where the mapping has one (an IPv6-only one: its
        // port).
        let published = match mapping.host.key() {
            Some(key4) => ports.iter().any(|(key, target)| {
                *key == key4
                    && target.container_ip() == ip
                    && target.container_port() == mapping.container_port
            }),
            None => tables
                .ports::<netpath_common::Ip6>()
                .map_err(failed)?
                .iter()
                .any(|(key, _)| Some(*key) == mapping.host.key6()),
        };
        if !published {
            problems.push(format!("{} is not published to {ip}", mapping.host));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code::FAILED, problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_fit_and_differ() {
        let a = attachment_name("0123456789abcdef", "eth0");
        assert_eq!(a.len(), 12);
        assert!(container::validate_name(&a).is_ok());
        assert_ne!(a, attachment_name("0123456789abcdef", "eth1"));
        assert_eq!(a, attachment_name("0123456789abcdef", "eth0"));
    }

    #[test]
    fn port_mappings_become_published_ports() {
        let conf: RuntimeConfig = serde_json::from_value(json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"},
            {"hostPort": 8443, "containerPort": 443, "hostIP": "::"},
        ]}))
        .expect("valid");
        let m = port_mappings(&conf.port_mappings).expect("valid");
        assert_eq!(m[0].host.to_string(), "8080/tcp");
        assert_eq!(m[1].host.to_string(), "127.0.0.1:5353/udp");
        assert_eq!(m[2].host.to_string(), "[::]:8443/tcp");
        assert_eq!((m[2].host.key(), m[2].host.key6().is_some()), (None, true));
        let bad: RuntimeConfig = serde_json::from_value(json!({"portMappings": [
            {"hostPort": 80, "containerPort": 80, "hostIP": "localhost"},
        ]}))
        .expect("valid JSON");
        assert_eq!(
            port_mappings(&bad.port_mappings).map_err(|e| e.code).err(),
            Some(code::INVALID_CONFIG)
        );
    }
}
