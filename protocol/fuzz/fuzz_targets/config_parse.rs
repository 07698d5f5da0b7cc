#![no_main]
//! Configuration text of any shape, as YAML and as JSON, for every file type.
use craftmesh_protocol::config::agents::{AgentDefinition, AgentsDiscoveryFile};
use craftmesh_protocol::config::mcp::{DiscoveryFile, ServersFile};
use craftmesh_protocol::config::source::{parse, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for f in [Format::Yaml, Format::Json] {
        let _ = parse::<DiscoveryFile>("f", text, f);
        let _ = parse::<ServersFile>("f", text, f);
        let _ = parse::<AgentsDiscoveryFile>("f", text, f);
        let _ = parse::<AgentDefinition>("f", text, f);
    }
});
