//! `netpath flows --watch`: flow opened/closed events as they happen, read
//! from the pinned `EVENTS` ring buffer. Needs no agent.
//!
//! A BPF ring buffer has one consumer position, shared by everyone who maps
//! it: two watchers of one instance split the events between them (each sees
//! some). The agent does not consume `EVENTS`, so it takes none away.
use std::{
    io::{self, Write},
    os::fd::AsRawFd,
};

use aya::maps::{Map, MapData, RingBuf};
use netpath_common::{FlowEvent, Ip6, host::HostAddr, names};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    directories::Instance,
    flows::{
        FlowEventView, FlowFilter, monotonic_coarse_ns, monotonic_ns, network_of, realtime_ns,
    },
    state::State,
    tables::TablesError,
};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error("waiting for flow events: {0}")]
    Io(#[from] io::Error),
    #[error("cannot write JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

/// Where the events go: one line each, text or compact JSON.
struct Printer<'a> {
    /// The networks, as the watch began, for each event's.
    state: &'a State,
    filter: &'a FlowFilter,
    json: bool,
    /// Events stamped before we started are backlog nobody consumed (the ring
    /// keeps them until read): not "as they happen", so skipped.
    since_ns: u64,
    wall_offset_ns: i128,
}

impl Printer<'_> {
    /// Prints every complete record in the ring. `Ok(false)`: stdout is
    /// gone (e.g. `| head`), time to stop.
    fn drain(&self, ring: &mut RingBuf<MapData>) -> Result<bool, WatchError> {
        let mut out = io::stdout().lock();
        while let Some(item) = ring.next() {
            let Some(mut view) = event_view(&item, self.filter, self.since_ns, self.wall_offset_ns)
            else {
                continue;
            };
            view.network = network_of(self.state, &view.original, &view.translated);
            let written = if self.json {
                serde_json::to_writer(&mut out, &view)?;
                writeln!(out)
            } else {
                writeln!(out, "{view}")
            };
            match written.and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

/// The event a ring record holds, if it is one to show (stamped from
/// `since_ns` on, passing `filter`). Both families share the ring: a
/// record's size tells which.
fn event_view(
    record: &[u8],
    filter: &FlowFilter,
    since_ns: u64,
    wall_offset_ns: i128,
) -> Option<FlowEventView> {
    match record.len() {
        n if n == size_of::<FlowEvent<Ip6>>() => {
            family_event_view::<Ip6>(record, filter, since_ns, wall_offset_ns)
        }
        n if n >= size_of::<FlowEvent>() => {
            family_event_view::<u32>(record, filter, since_ns, wall_offset_ns)
        }
        _ => None,
    }
}

fn family_event_view<A: HostAddr>(
    record: &[u8],
    filter: &FlowFilter,
    since_ns: u64,
    wall_offset_ns: i128,
) -> Option<FlowEventView>
where
    FlowEvent<A>: bytemuck::Pod,
{
    let event: FlowEvent<A> =
        bytemuck::pod_read_unaligned(record.get(..size_of::<FlowEvent<A>>())?);
    (event.ts_ns >= since_ns && filter.matches(&event.key, &event.reply))
        .then(|| FlowEventView::new(&event, wall_offset_ns))
}

/// Registers a ring buffer (aya's `RingBuf`, or an `EbpfLogger` around one)
/// with the runtime, to wait until it has records.
pub(crate) fn readable<T: AsRawFd>(ring: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: both types own their map's fd, open and unchanged until they
    // drop, which is when the AsyncFd drops.
    Ok(unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?)
}

/// Streams events until SIGINT or SIGTERM (or until stdout closes).
pub async fn watch(
    instance: &Instance,
    state: &State,
    filter: &FlowFilter,
    json: bool,
) -> Result<(), WatchError> {
    let path = instance.map_pin(names::EVENTS);
    let map_err = |source| TablesError::Map {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(|_| TablesError::from(instance.not_up()))?;
    let ring = RingBuf::try_from(Map::from_map_data(data).map_err(map_err)?).map_err(map_err)?;
    let mut ring = readable(ring)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Events are stamped with the coarse clock where the kernel has it (a
    // tick behind the fine one): "since" on the fine clock would skip an
    // event of the next few milliseconds. The coarse clock is never ahead
    // of either.
    let since_ns = monotonic_coarse_ns();
    let printer = Printer {
        state,
        filter,
        json,
        since_ns,
        wall_offset_ns: realtime_ns() - i128::from(monotonic_ns()),
    };
    // Skips the backlog; from here on every new event is ours to show.
    if !printer.drain(ring.get_mut())? {
        return Ok(());
    }
    // On stderr, so scripts reading stdout see events only; it also tells
    // them the watch is in place.
    eprintln!("watching flow events of instance {instance} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if !printer.drain(guard.get_inner_mut())? {
                    return Ok(());
                }
                guard.clear_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use netpath_common::{EVENT_OPENED, FlowKey, Proto};

    use super::*;

    #[test]
    fn a_records_size_tells_its_family() {
        assert_eq!(
            (size_of::<FlowEvent>(), size_of::<FlowEvent<Ip6>>()),
            (48, 96)
        );
        let (a, b) = (Ipv6Addr::LOCALHOST, "2001:db8::2".parse().expect("IPv6"));
        let key = FlowKey::new(a, b, 1000, 80, Proto::Tcp);
        let v6 = FlowEvent {
            key,
            reply: key.reversed(),
            ts_ns: 10,
            kind: EVENT_OPENED,
            ..FlowEvent::default()
        };
        let all = FlowFilter::default();
        let view = event_view(bytemuck::bytes_of(&v6), &all, 0, 0).expect("an IPv6 event");
        assert_eq!((view.original.src, view.event), (IpAddr::V6(a), "opened"));
        assert!(
            event_view(bytemuck::bytes_of(&v6), &all, 11, 0).is_none(),
            "older"
        );

        let v4 = FlowEvent {
            key: FlowKey::new(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST, 1, 2, Proto::Udp),
            ..FlowEvent::default()
        };
        let view = event_view(bytemuck::bytes_of(&v4), &all, 0, 0).expect("an IPv4 event");
        assert_eq!(view.original.src, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(event_view(&[0; 20], &all, 0, 0).is_none(), "too short");
    }
}
