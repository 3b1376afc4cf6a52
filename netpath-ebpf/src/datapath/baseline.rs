//! Programs that do nothing, loaded only by cost measurements as the
//! baseline a datapath program's cost is taken against.
use aya_ebpf::{macros::classifier, programs::TcContext};

/// `TC_ACT_OK` without reading the packet; attached nowhere.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    0
}
