//! netpath: Docker-style bridge networking whose NAT, conntrack and forwarding
//! run in eBPF programs. The CLI (`cli`) drives the topology (`topology`,
//! `netns`), the state file (`state`), and the datapath (`datapath`, `tables`).
pub mod agent;
pub mod cli;
pub mod config;
pub mod container;
pub mod daemon;
pub mod datapath;
pub mod directories;
pub mod ebpf_log;
pub mod flows;
pub mod ipam;
pub mod lifecycle;
pub mod metrics;
pub mod netns;
pub mod publish;
pub mod rollback;
pub mod state;
pub mod sysctl;
pub mod tables;
pub mod topology;
pub mod watch;
