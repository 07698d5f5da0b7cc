//! The `mesh` block of `.mcp/discovery-config.yaml`: parsed, layered field by field, typos warned.

mod common;

use common::{no_env, show};
use craftmesh_protocol::config::{LayerFiles, LayerKind, Profile, TextFile, load};

fn layer(kind: LayerKind, yaml: &str) -> LayerFiles {
    let mut l = LayerFiles::empty(kind);
    l.mcp_discovery = Some(TextFile { path: format!("{kind:?}/discovery-config.yaml"), text: yaml.to_string() });
    l
}

#[test]
fn mesh_block_layers_field_by_field() {
    let project =
        layer(LayerKind::Project, "mesh:\n  listen_port: 7500\n  interfaces:\n    allow: [eth0]\n  static_peers: [/ip4/10.0.0.2/tcp/7411]\n  tags: [gpu]\n");
    let user = layer(LayerKind::User, "mesh:\n  listen_port: 7600\n  mdns: false\n");
    let (cfg, d) = load(&[project, user], Profile::Default, &no_env);
    let cfg = cfg.unwrap_or_else(|| panic!("{}", show(&d)));
    assert_eq!(cfg.mesh.listen_port, Some(7600), "user layer wins");
    assert_eq!(cfg.mesh.mdns, Some(false));
    assert_eq!(cfg.mesh.interfaces.allow.as_deref(), Some(&["eth0".to_string()][..]), "kept from the project layer");
    assert_eq!(cfg.mesh.static_peers.as_ref().map(Vec::len), Some(1));
    assert_eq!(cfg.mesh.tags.as_deref(), Some(&["gpu".to_string()][..]));
}

#[test]
fn mesh_block_typos_warn_and_bad_types_fail_with_a_line() {
    let (cfg, d) = load(&[layer(LayerKind::Project, "mesh:\n  listen_prot: 1\n")], Profile::Default, &no_env);
    assert!(cfg.is_some());
    let w = d.warnings().find(|w| w.field == "mesh.listen_prot").unwrap_or_else(|| panic!("{}", show(&d)));
    assert_eq!(w.line, 2);
    let (cfg, d) = load(&[layer(LayerKind::Project, "mesh:\n  listen_port: 99999\n")], Profile::Default, &no_env);
    assert!(cfg.is_none());
    let e = d.errors().next().unwrap_or_else(|| panic!("{}", show(&d)));
    assert_eq!((e.line, e.field.as_str()), (2, "mesh.listen_port"), "{}", show(&d));
}

#[test]
fn claims_block_layers_field_by_field_and_a_bad_role_fails_with_its_line() {
    use craftmesh_protocol::config::mcp::RoleSetting;
    let project = layer(LayerKind::Project, "claims:\n  role: server\n  lock_delay: 5\n");
    let user = layer(LayerKind::User, "claims:\n  role: client\n  promote_after: 60\n");
    let (cfg, d) = load(&[project, user], Profile::Default, &no_env);
    let cfg = cfg.unwrap_or_else(|| panic!("{}", show(&d)));
    assert_eq!(cfg.claims.role, Some(RoleSetting::Client), "user layer wins");
    assert_eq!(cfg.claims.lock_delay, Some(5), "kept from the project layer");
    assert_eq!(cfg.claims.promote_after, Some(60));
    let (cfg, d) = load(&[layer(LayerKind::Project, "mesh: {}\nclaims:\n  role: banana\n")], Profile::Default, &no_env);
    assert!(cfg.is_none());
    let e = d.errors().next().unwrap_or_else(|| panic!("{}", show(&d)));
    assert_eq!((e.line, e.field.as_str()), (3, "claims.role"), "{}", show(&d));
    let (cfg, d) = load(&[layer(LayerKind::Project, "claims:\n  lock_delay: -1\n")], Profile::Default, &no_env);
    assert!(cfg.is_none(), "{}", show(&d));
}
