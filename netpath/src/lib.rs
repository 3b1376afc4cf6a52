//! netpath: Docker-style bridge networking whose NAT, conntrack and forwarding
//! run in eBPF programs. The CLI (`cli`) drives the instance's life cycle
//! (`lifecycle`, with `daemon` for the agent process and `agent` for what it
//! runs) and its containers (`container`, `publish`; `cni` is the CNI
//! plugin's entry point into `container`), through the topology
//! (`topology`, `netns`), the state file (`state`) and the datapath
//! (`datapath`, `tables`). At the bottom, importing no other module:
//! `directories` owns every run-time path, `config` the settings and defaults.
pub mod agent;
pub mod cli;
pub mod cni;
pub mod config;
pub mod container;
pub mod daemon;
pub mod datapath;
pub mod directories;
pub mod ebpf_log;
pub mod flows;
pub mod host;
pub mod ipam;
pub mod lifecycle;
pub mod metrics;
pub mod netns;
pub mod netns_processes;
pub mod network;
pub mod publish;
pub mod rollback;
pub mod state;
pub mod sysctl;
pub mod tables;
pub mod top;
pub mod topology;
pub mod watch;
