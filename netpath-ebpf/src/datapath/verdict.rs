//! What a program does with a packet. Every exit of a TC or XDP program is a
//! `Verdict`, and turning it into the hook's return value is what counts it:
//! no path can pass or drop a packet without `netpath stats` showing why.
use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action};

use super::maps::count;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    /// On through the kernel's stack.
    Pass,
    Drop,
    /// Handed to a redirect helper, whose return value is the hook's action
    /// (it says "drop" itself when the target is gone).
    Redirect,
}

/// A struct, not an enum with payloads: values of differently laid out
/// variants merge into registers that the verifier finds uninitialised (or
/// holding a pointer) on some path.
#[derive(Clone, Copy)]
pub struct Verdict {
    action: Action,
    /// The `stat` counter this verdict counts under.
    reason: u32,
    /// The redirect helper's return value.
    redirect: i64,
}

impl Verdict {
    #[inline(always)]
    pub fn pass(reason: u32) -> Self {
        Self {
            action: Action::Pass,
            reason,
            redirect: 0,
        }
    }

    #[inline(always)]
    pub fn drop(reason: u32) -> Self {
        Self {
            action: Action::Drop,
            reason,
            redirect: 0,
        }
    }

    /// `helper_result`: what `bpf_redirect*` returned.
    #[inline(always)]
    pub fn redirect(reason: u32, helper_result: i64) -> Self {
        Self {
            action: Action::Redirect,
            reason,
            redirect: helper_result,
        }
    }

    #[inline(always)]
    pub fn is_pass(&self) -> bool {
        self.action == Action::Pass
    }

    /// The TC action.
    #[inline(always)]
    pub fn tc(self) -> i32 {
        count(self.reason);
        match self.action {
            Action::Pass => TC_ACT_OK,
            Action::Drop => TC_ACT_SHOT,
            Action::Redirect => self.redirect as i32,
        }
    }

    /// The XDP action.
    #[inline(always)]
    pub fn xdp(self) -> u32 {
        count(self.reason);
        match self.action {
            Action::Pass => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
            Action::Redirect => self.redirect as u32,
        }
    }
}
