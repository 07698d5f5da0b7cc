#![no_main]
//! Any bytes from the network: decode must return, never panic, and re-encode what it accepts.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = craftmesh_protocol::wire::decode(data) {
        let again = craftmesh_protocol::wire::encode(&msg);
        assert_eq!(craftmesh_protocol::wire::decode(&again).ok(), Some(msg));
    }
});
