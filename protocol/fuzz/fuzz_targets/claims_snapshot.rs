#![no_main]
//! Snapshot bytes from a peer (InstallSnapshot): decoding must reject, never panic, and a
//! decoded state must keep applying commands without panicking.
use craftmesh_protocol::claims::state::ClaimsState;
use craftmesh_protocol::claims::{Command, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut s) = ClaimsState::from_bytes(data) {
        let next = s.last_index() + 1;
        let _ = s.apply(next, s.epoch(), &Command { at_ms: s.now_ms().saturating_add(1), op: Op::Tick });
        let _ = s.view(s.now_ms());
    }
});
