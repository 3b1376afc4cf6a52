//! netpath: Docker-style bridge networking whose NAT, conntrack and forwarding
//! run in eBPF programs. The CLI (`cli`) drives the topology (`topology`,
//! `netns`), the state file (`state`), and the datapath (`datapath`, `tables`).
pub mod cli;
pub mod datapath;
