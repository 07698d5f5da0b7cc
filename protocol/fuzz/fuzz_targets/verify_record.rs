#![no_main]
//! Signed records from anyone: verification and merging must reject, never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let third = data.len() / 3;
    let s = craftmesh_protocol::wire::SignedRecord { record: data[..third].to_vec(), public_key: data[third..2 * third].to_vec(), signature: data[2 * third..].to_vec() };
    let _ = craftmesh_protocol::wire::verify_record(&s, "mesh");
    let mut r = craftmesh_protocol::state::Records::new("mesh", "me");
    let _ = r.merge(&s);
});
