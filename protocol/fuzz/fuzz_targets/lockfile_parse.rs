#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = craftmesh_protocol::lockfile::parse(&String::from_utf8_lossy(data));
});
