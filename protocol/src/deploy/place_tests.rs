use super::*;
use crate::config::mcp::ServerDiscovery;
use proptest::prelude::*;

/// A roomy, idle host on mains: 8192 MB free of 16384 (reserve 819), 4 idle cores, `npx`,
/// `uv` and Docker; named `NODE-host`.
fn host(node: &str) -> HostFacts {
    HostFacts {
        node: node.to_string(),
        name: format!("{node}-host"),
        free_memory_mb: 8192,
        total_memory_mb: 16384,
        cpu_cores: 4.0,
        load1: 0.0,
        tags: vec![],
        ports_in_use: vec![],
        commands: vec!["npx".into(), "uv".into()],
        docker: true,
        on_battery: false,
    }
}

/// A host with 256 MB free of 4096 (reserve 204): room for nothing that states its memory.
fn small(node: &str) -> HostFacts {
    HostFacts { free_memory_mb: 256, total_memory_mb: 4096, ..host(node) }
}

fn always_on(h: HostFacts) -> HostFacts {
    HostFacts { tags: vec!["gpu".into(), ALWAYS_ON.into()], ..h }
}

fn mem(mb: u64) -> Need {
    Need { memory_mb: Some(mb), ..Need::default() }
}

fn preferring(need: Need, hosts: &[&str]) -> Need {
    Need { preferred_hosts: hosts.iter().map(|s| s.to_string()).collect(), ..need }
}

fn member(id: &str) -> Placement {
    Placement::Member(id.to_string())
}

struct Case {
    name: &'static str,
    local: HostFacts,
    members: Vec<HostFacts>,
    need: Need,
    check: bool,
    want: Placement,
}

fn case(name: &'static str, local: HostFacts, members: Vec<HostFacts>, need: Need, want: Placement) -> Case {
    Case { name, local, members, need, check: true, want }
}

#[test]
fn scenarios_place_exactly_as_the_rules_say() {
    let cases = vec![
        Case { check: false, ..case("check off deploys here though nothing fits", small("a"), vec![host("b")], mem(512), Placement::Local) },
        case(
            "this node fits: stays here over a roomier always-on member",
            host("a"),
            vec![always_on(HostFacts { free_memory_mb: 60_000, ..host("b") })],
            mem(512),
            Placement::Local,
        ),
        case(
            "most memory headroom wins",
            small("a"),
            vec![HostFacts { free_memory_mb: 4096, ..host("b") }, host("c"), HostFacts { free_memory_mb: 2048, ..host("d") }],
            mem(512),
            member("c"),
        ),
        case("always-on beats more memory", small("a"), vec![always_on(HostFacts { free_memory_mb: 2048, ..host("b") }), host("c")], mem(512), member("b")),
        case(
            "mains beats battery with more memory",
            small("a"),
            vec![HostFacts { on_battery: true, free_memory_mb: 16000, ..host("b") }, HostFacts { free_memory_mb: 2048, ..host("c") }],
            mem(512),
            member("c"),
        ),
        case(
            "within one headroom step the lower load per core wins",
            small("a"),
            vec![HostFacts { load1: 3.0, ..host("b") }, HostFacts { free_memory_mb: 8100, load1: 0.4, ..host("c") }],
            mem(512),
            member("c"),
        ),
        case(
            "a step more headroom outweighs load",
            small("a"),
            vec![HostFacts { load1: 3.0, ..host("b") }, HostFacts { free_memory_mb: 7800, ..host("c") }],
            mem(512),
            member("b"),
        ),
        case(
            "load counts per core",
            small("a"),
            vec![HostFacts { load1: 2.0, ..host("b") }, HostFacts { cpu_cores: 16.0, load1: 4.0, ..host("c") }],
            mem(512),
            member("c"),
        ),
        case("equal facts go to the lower peer id", small("a"), vec![host("c"), host("b"), host("d")], mem(512), member("b")),
        case(
            "odd cpu figures rank last",
            small("a"),
            vec![HostFacts { load1: f64::NAN, ..host("b") }, HostFacts { cpu_cores: 0.0, ..host("c") }, HostFacts { load1: 3.9, ..host("d") }],
            mem(512),
            member("d"),
        ),
        case("a preferred host that fits wins over this node", host("a"), vec![host("b"), host("c")], preferring(mem(512), &["x", "c", "b"]), member("c")),
        case(
            "preferred order beats rank",
            small("a"),
            vec![always_on(host("b")), HostFacts { on_battery: true, ..host("c") }],
            preferring(mem(512), &["c", "b"]),
            member("c"),
        ),
        case(
            "a preferred host that does not fit is skipped",
            small("a"),
            vec![small("b"), HostFacts { free_memory_mb: 2048, ..host("c") }, always_on(host("d"))],
            preferring(mem(512), &["b", "c"]),
            member("c"),
        ),
        case("a preferred name matches in any case", host("a"), vec![host("b"), host("c")], preferring(mem(512), &["C-Host"]), member("c")),
        case(
            "a name shared by members goes to the best ranked of them",
            small("a"),
            vec![HostFacts { name: "nas".into(), ..host("c") }, always_on(HostFacts { name: "NAS".into(), ..host("d") }), always_on(host("b"))],
            preferring(mem(512), &["nas"]),
            member("d"),
        ),
        case("this node named before members stays here", host("a"), vec![always_on(host("b"))], preferring(mem(512), &["x", "a-host", "b"]), Placement::Local),
        case("no preferred host fits: this node if it fits", host("a"), vec![small("b")], preferring(mem(512), &["b"]), Placement::Local),
        case(
            "no preferred host fits and this node does not: the ranking",
            small("a"),
            vec![small("b"), host("c"), always_on(host("d"))],
            preferring(mem(512), &["b"]),
            member("d"),
        ),
        case(
            "a port in use here sends it elsewhere",
            HostFacts { ports_in_use: vec![8000], ..host("a") },
            vec![host("b")],
            Need { ports: vec![8000], ..Need::default() },
            member("b"),
        ),
        case(
            "a missing command sends it to a member that has it",
            HostFacts { commands: vec!["npx".into()], ..host("a") },
            vec![HostFacts { commands: vec![], ..host("b") }, host("c")],
            Need { dependencies: vec!["uv".into()], ..Need::default() },
            member("c"),
        ),
        case(
            "a docker CLI without a daemon is no docker",
            HostFacts { docker: false, commands: vec!["docker".into()], ..host("a") },
            vec![host("b")],
            Need { dependencies: vec!["docker".into()], ..Need::default() },
            member("b"),
        ),
        case(
            "too few idle cores sends it elsewhere",
            HostFacts { load1: 3.0, ..host("a") },
            vec![host("b")],
            Need { cpu_cores: Some(2.0), ..Need::default() },
            member("b"),
        ),
        case(
            "a member entry with this node's id is ignored",
            small("a"),
            vec![host("a")],
            mem(512),
            Placement::Nowhere(vec![("a".into(), vec![Misfit::Memory { need_mb: 512, free_mb: 256, reserve_mb: 204 }])]),
        ),
        case(
            "nowhere lists every host's misfits, this node first, then members by id",
            small("m"),
            vec![HostFacts { ports_in_use: vec![8000], ..host("c") }, HostFacts { commands: vec![], ..host("b") }],
            Need { memory_mb: Some(512), ports: vec![8000], dependencies: vec!["uv".into()], ..Need::default() },
            Placement::Nowhere(vec![
                ("m".into(), vec![Misfit::Memory { need_mb: 512, free_mb: 256, reserve_mb: 204 }]),
                ("b".into(), vec![Misfit::Missing("uv".into())]),
                ("c".into(), vec![Misfit::Port(8000)]),
            ]),
        ),
    ];
    for c in cases {
        assert_eq!(choose(&c.local, &c.members, &c.need, c.check), c.want, "{}", c.name);
    }
}

#[test]
fn memory_must_fit_beside_the_reserve() {
    assert_eq!((memory_reserve_mb(0), memory_reserve_mb(16384), memory_reserve_mb(1 << 20)), (RESERVE_MIN_MB, 819, RESERVE_MAX_MB));
    let h = HostFacts { free_memory_mb: 512 + 819, ..host("a") };
    assert_eq!(fits(&h, &mem(512)), Ok(()));
    assert_eq!(fits(&h, &mem(513)), Err(vec![Misfit::Memory { need_mb: 513, free_mb: 1331, reserve_mb: 819 }]));
    let empty = HostFacts { free_memory_mb: 0, ..host("a") };
    assert_eq!(fits(&empty, &Need::default()), Ok(()), "only what the server states is checked");
}

#[test]
fn fits_reports_every_misfit_at_once() {
    let h = HostFacts { free_memory_mb: 100, load1: 3.5, ports_in_use: vec![8080, 8000], commands: vec![], docker: false, ..host("a") };
    let need =
        Need { memory_mb: Some(200), cpu_cores: Some(1.0), ports: vec![8000, 9000, 8080], dependencies: vec!["uv".into(), "docker".into()], ..Need::default() };
    assert_eq!(
        fits(&h, &need),
        Err(vec![
            Misfit::Memory { need_mb: 200, free_mb: 100, reserve_mb: 819 },
            Misfit::Cpu { need: 1.0, idle: 0.5 },
            Misfit::Port(8000),
            Misfit::Port(8080),
            Misfit::Missing("uv".into()),
            Misfit::Missing("docker".into()),
        ])
    );
}

#[test]
fn hosts_with_odd_cpu_figures_have_no_idle_core() {
    let need = Need { cpu_cores: Some(0.1), ..Need::default() };
    for (cores, load) in [(f64::NAN, 0.0), (4.0, f64::NAN), (-2.0, 0.0), (4.0, -1.0), (f64::INFINITY, 0.0), (0.0, 0.0)] {
        let h = HostFacts { cpu_cores: cores, load1: load, ..host("a") };
        assert_eq!(fits(&h, &need), Err(vec![Misfit::Cpu { need: 0.1, idle: 0.0 }]), "cores {cores}, load {load}");
    }
    assert_eq!(fits(&HostFacts { load1: 9.0, ..host("a") }, &need), Err(vec![Misfit::Cpu { need: 0.1, idle: 0.0 }]), "overload is no idle core, not fewer");
}

#[test]
fn misfits_read_as_one_line_each() {
    let lines: Vec<String> = [
        Misfit::Memory { need_mb: 512, free_mb: 600, reserve_mb: 128 },
        Misfit::Cpu { need: 2.0, idle: 0.30000000000000004 },
        Misfit::Cpu { need: 0.25, idle: 0.0 },
        Misfit::Port(8000),
        Misfit::Missing("uv".into()),
        Misfit::Missing("docker".into()),
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    assert_eq!(
        lines,
        [
            "needs 512 MB of memory; 600 MB free, of which 128 MB is kept in reserve",
            "needs 2 CPU cores; 0.3 idle",
            "needs 0.25 CPU cores; 0 idle",
            "port 8000 is already in use",
            "needs `uv`, which is not on the PATH",
            "needs Docker; no Docker daemon answers",
        ]
    );
}

#[test]
fn need_is_read_from_the_discovery_file() {
    let yaml = r#"
resource_requirements:
  memory_mb: 512
  cpu_cores: 0.5
  ports: [8000, 0, 8000, 8001]
  dependencies: [python, " uv", uv, ""]
deployment_config:
  type: docker
  preferred_hosts: [nas, " nas ", "", 12D3KooWabc]
"#;
    let sd: ServerDiscovery = serde_yaml_ng::from_str(yaml).expect("parse");
    let need = Need::from_config(sd.resource_requirements.as_ref(), sd.deployment_config.as_ref());
    assert_eq!(
        need,
        Need {
            memory_mb: Some(512),
            cpu_cores: Some(0.5),
            ports: vec![8000, 8001],
            dependencies: vec!["python".into(), "uv".into(), "docker".into()],
            preferred_hosts: vec!["nas".into(), "12D3KooWabc".into()],
        }
    );
}

#[test]
fn need_drops_what_states_no_need() {
    assert_eq!(Need::from_config(None, None), Need::default());
    for cpu in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let r = ResourceRequirements { memory_mb: Some(0), cpu_cores: Some(cpu), ..ResourceRequirements::default() };
        assert_eq!(Need::from_config(Some(&r), None), Need::default(), "cpu {cpu}");
    }
    let npx = DeploymentConfig { kind: Some(DeploymentType::Npx), ..DeploymentConfig::default() };
    let r = ResourceRequirements { dependencies: vec!["npx".into()], ..ResourceRequirements::default() };
    assert_eq!(Need::from_config(Some(&r), Some(&npx)).dependencies, vec!["npx".to_string()], "the deployment type's tool is not listed twice");
}

#[test]
fn deployment_config_without_preferred_hosts_serializes_as_before() {
    let json = serde_json::to_value(DeploymentConfig { on_demand: Some(true), ..DeploymentConfig::default() }).expect("json");
    assert!(json.get("preferred_hosts").is_none(), "{json}");
}

// ---- properties ----

fn arb_host() -> impl Strategy<Value = HostFacts> {
    (
        // few values, so that members often tie and the tie-break decides
        prop::sample::select(vec![0u64, 1500, 8192]),
        prop::sample::select(vec![0u64, 16384]),
        prop::sample::select(vec![4.0, -1.0, f64::NAN]),
        prop::sample::select(vec![0.0, 2.0, f64::INFINITY]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..3,
        prop::sample::subsequence(vec![8000u16, 8080], 0..=2),
        prop::sample::subsequence(vec!["uv", "npx", "docker"], 0..=3),
    )
        .prop_map(|(free, total, cores, load, always, battery, docker, name, ports, commands)| HostFacts {
            node: String::new(),
            name: format!("name{name}"),
            free_memory_mb: free,
            total_memory_mb: total,
            cpu_cores: cores,
            load1: load,
            tags: if always { vec![ALWAYS_ON.to_string()] } else { vec![] },
            ports_in_use: ports,
            commands: commands.into_iter().map(String::from).collect(),
            docker,
            on_battery: battery,
        })
}

fn arb_need() -> impl Strategy<Value = Need> {
    (
        prop::sample::select(vec![None, Some(256u64), Some(1024), Some(4000)]),
        prop::sample::select(vec![None, Some(0.5), Some(2.0)]),
        prop::sample::subsequence(vec![8000u16, 8080], 0..=2),
        prop::sample::subsequence(vec!["uv", "npx", "docker"], 0..=3),
        prop::collection::vec(prop::sample::select(vec!["n0", "n3", "name1", "NAME2", "local", "x"]), 0..3),
    )
        .prop_map(|(memory_mb, cpu_cores, ports, deps, preferred)| Need {
            memory_mb,
            cpu_cores,
            ports,
            dependencies: deps.into_iter().map(String::from).collect(),
            preferred_hosts: preferred.into_iter().map(String::from).collect(),
        })
}

/// This node (`local`) and up to six members `n0`, `n1`, ...
fn arb_mesh() -> impl Strategy<Value = (HostFacts, Vec<HostFacts>)> {
    (arb_host(), prop::collection::vec(arb_host(), 0..7)).prop_map(|(local, members)| {
        let members = members.into_iter().enumerate().map(|(i, h)| HostFacts { node: format!("n{i}"), ..h }).collect();
        (HostFacts { node: "local".into(), ..local }, members)
    })
}

/// `v` in an order drawn from `seed`.
fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
    let mut out = v.to_vec();
    let mut x = seed | 1;
    for i in (1..out.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.swap(i, (x % (i as u64 + 1)) as usize);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A chosen host always fits, and nowhere means no host fits, each with its reasons.
    #[test]
    fn the_chosen_host_always_fits((local, members) in arb_mesh(), need in arb_need(), check in any::<bool>()) {
        let any_fits = fits(&local, &need).is_ok() || members.iter().any(|m| fits(m, &need).is_ok());
        match choose(&local, &members, &need, check) {
            Placement::Local => prop_assert!(!check || fits(&local, &need).is_ok()),
            Placement::Member(id) => {
                prop_assert!(check && id != local.node);
                let m = members.iter().find(|m| m.node == id);
                prop_assert!(m.is_some_and(|m| fits(m, &need).is_ok()), "{id} does not fit");
                if fits(&local, &need).is_ok() {
                    // only a preference written before any that names this node beats it
                    let here = need.preferred_hosts.iter().position(|p| is_named(&local, p)).unwrap_or(need.preferred_hosts.len());
                    prop_assert!(need.preferred_hosts[..here].iter().any(|p| m.is_some_and(|m| is_named(m, p))), "{id} beat this node, which fits");
                }
            }
            Placement::Nowhere(why) => {
                prop_assert!(check && !any_fits);
                prop_assert_eq!(why.len(), members.len() + 1);
                prop_assert_eq!(&why[0].0, &local.node);
                prop_assert!(why.iter().all(|(_, m)| !m.is_empty()));
            }
        }
    }

    /// Every node that sees the same members picks the same one, whatever order they came in.
    #[test]
    fn the_choice_does_not_depend_on_member_order((local, members) in arb_mesh(), need in arb_need(), seed in any::<u64>()) {
        let need = Need { memory_mb: need.memory_mb.or(Some(256)), ..need };
        // this node as generated, and full, so that the ranking of members decides
        for local in [local.clone(), HostFacts { free_memory_mb: 0, ..local }] {
            let a = choose(&local, &members, &need, true);
            let b = choose(&local, &shuffled(&members, seed), &need, true);
            prop_assert_eq!(a, b);
        }
    }
}
