use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use netpath_common::{Config, Endpoint, FlowEntry, FlowKey, PortKey, PortTarget, stat};

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);
#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(4096, 0);
#[map(name = "PORTS")]
static PORTS: HashMap<PortKey, PortTarget> = HashMap::pinned(65536, 0);
#[map(name = "CONNTRACK")]
static CONNTRACK: HashMap<FlowKey, FlowEntry> = HashMap::pinned(65536, 0);
#[map(name = "CT_REPLY")]
static CT_REPLY: HashMap<FlowKey, FlowKey> = HashMap::pinned(65536, 0);
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::STATS_LEN, 0);

fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

#[classifier]
pub fn from_container(_ctx: TcContext) -> i32 {
    count(stat::PASS);
    TC_ACT_OK
}

#[classifier]
pub fn from_uplink(_ctx: TcContext) -> i32 {
    count(stat::PASS);
    TC_ACT_OK
}

#[classifier]
pub fn to_uplink(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[xdp]
pub fn xdp_uplink(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(_ctx: SockAddrContext) -> i32 {
    1
}
