//! The pinned links that keep programs attached: one name scheme, written,
//! read back and removed here only. The names must not change: a datapath
//! pinned by an earlier netpath is adopted by finding its links.
//!
//! `link_tc_<ifname>_<ingress|egress>`, `link_xdp_<ifname>` (for a container,
//! the host side's name; the link sits on the `eth0` inside) and
//! `link_<program>` for the cgroup socket hooks.
use std::{fs, path::PathBuf};

use aya::programs::{
    TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
};

use super::DatapathError;
use crate::directories::Instance;

/// Prefix every link pin's file name starts with.
const PREFIX: &str = "link_";

/// Which way a TC program sees traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcDirection {
    Ingress,
    Egress,
}

impl TcDirection {
    pub fn name(self) -> &'static str {
        match self {
            TcDirection::Ingress => "ingress",
            TcDirection::Egress => "egress",
        }
    }

    pub fn attach_type(self) -> TcAttachType {
        match self {
            TcDirection::Ingress => TcAttachType::Ingress,
            TcDirection::Egress => TcAttachType::Egress,
        }
    }
}

/// A pinned link of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkPin {
    /// A TC program on an interface (tcx kernels; clsact filters have none).
    Tc {
        ifname: String,
        direction: TcDirection,
    },
    /// An XDP program: on the uplink, or on the `eth0` of the container whose
    /// host-side veth is `ifname`.
    Xdp { ifname: String },
    /// A cgroup socket hook, by its program's name.
    Cgroup { program: String },
}

impl LinkPin {
    pub fn tc(ifname: &str, direction: TcDirection) -> Self {
        Self::Tc {
            ifname: ifname.to_owned(),
            direction,
        }
    }

    pub fn xdp(ifname: &str) -> Self {
        Self::Xdp {
            ifname: ifname.to_owned(),
        }
    }

    pub fn cgroup(program: &str) -> Self {
        Self::Cgroup {
            program: program.to_owned(),
        }
    }

    pub fn file_name(&self) -> String {
        match self {
            LinkPin::Tc { ifname, direction } => {
                format!("{PREFIX}tc_{ifname}_{}", direction.name())
            }
            LinkPin::Xdp { ifname } => format!("{PREFIX}xdp_{ifname}"),
            LinkPin::Cgroup { program } => format!("{PREFIX}{program}"),
        }
    }

    /// The link a pin file name stands for; None for other pins (maps,
    /// programs). Interface names may hold '_': the direction is the last word.
    pub fn parse(file_name: &str) -> Option<Self> {
        let name = file_name.strip_prefix(PREFIX)?;
        if let Some(rest) = name.strip_prefix("tc_") {
            let (ifname, direction) = rest.rsplit_once('_')?;
            let direction = match direction {
                "ingress" => TcDirection::Ingress,
                "egress" => TcDirection::Egress,
                _ => return None,
            };
            return Some(Self::tc(ifname, direction));
        }
        if let Some(ifname) = name.strip_prefix("xdp_") {
            return Some(Self::xdp(ifname));
        }
        Some(Self::cgroup(name))
    }

    pub fn path(&self, instance: &Instance) -> PathBuf {
        instance.pin_dir().join(self.file_name())
    }

    /// Whether this link is pinned and the kernel still has it, so the
    /// program is attached (an adopted datapath).
    pub fn is_pinned(&self, instance: &Instance) -> bool {
        PinnedLink::from_pin(self.path(instance)).is_ok()
    }

    /// Pins `link` so the program stays attached after this process exits.
    pub fn pin<L>(&self, instance: &Instance, link: L) -> Result<(), DatapathError>
    where
        FdLink: TryFrom<L, Error = LinkError>,
    {
        let path = self.path(instance);
        let pin_error = |message: String| DatapathError::Pin {
            path: path.display().to_string(),
            message,
        };
        let link = FdLink::try_from(link).map_err(|e| pin_error(e.to_string()))?;
        link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
        Ok(())
    }

    /// Removes the pin, which detaches the program. False when there was no
    /// such link.
    pub fn unpin(&self, instance: &Instance) -> bool {
        match PinnedLink::from_pin(self.path(instance)) {
            Ok(link) => {
                // Unpinned and dropped, the link detaches.
                drop(link.unpin());
                true
            }
            Err(_) => false,
        }
    }

    /// Every link pinned for the instance.
    pub fn list(instance: &Instance) -> Vec<Self> {
        fs::read_dir(instance.pin_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| Self::parse(&name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (link, name) in [
            (
                LinkPin::tc("np_a-1", TcDirection::Ingress),
                "link_tc_np_a-1_ingress",
            ),
            (
                LinkPin::tc("eth0", TcDirection::Egress),
                "link_tc_eth0_egress",
            ),
            (LinkPin::xdp("np-web"), "link_xdp_np-web"),
            (LinkPin::cgroup("sock_connect4"), "link_sock_connect4"),
        ] {
            assert_eq!(link.file_name(), name);
            assert_eq!(LinkPin::parse(name), Some(link));
        }
        assert_eq!(LinkPin::parse("prog_from_container"), None);
        assert_eq!(LinkPin::parse("CONFIG"), None);
    }
}
