//! Deploy decisions: where a server that has to be started should run.
//!
//! When `resource_check_enabled` is on, a node refuses to deploy a server it cannot hold
//! (memory, CPU, ports, dependencies) and asks a member with room to deploy it instead.
//! [`place::choose`] picks that member from the facts members gossip about themselves
//! ([`HostFacts`]); the node gathers the facts and sends the request.
//!
//! # Fitting
//!
//! [`fits`] checks one host against what one instance needs ([`Need`], from the server's
//! `resource_requirements` and `deployment_config`). Only what the server states is checked:
//!
//! - memory: the need must fit in the free memory less a reserve of 5% of the host's total,
//!   at least [`RESERVE_MIN_MB`] and at most [`RESERVE_MAX_MB`] ([`memory_reserve_mb`]).
//!   The figures are stale by a gossip round and other programs grow meanwhile; the reserve
//!   keeps a deploy from pushing the host into swap or the OOM killer.
//! - CPU: idle cores (cores less the one-minute load) must be at least the need. A host
//!   reporting a core count or load that is not a finite, non-negative number has none idle.
//! - ports: none of the server's ports may be in use on the host.
//! - dependencies: each must be among the host's `commands` (found on its PATH), except
//!   `docker`, which needs a Docker daemon that answers (`docker` true); the CLI alone is
//!   not enough. A `docker` or `npx` deployment type adds `docker` or `npx`.
//!
//! # Choosing
//!
//! [`choose`] goes down this list and stops at the first rule that gives a host:
//!
//! 1. `check_resources` off: this node (the behaviour without the check).
//! 2. The server's `preferred_hosts`, in the order written: the first entry that names a host
//!    that fits. An entry names a host by peer id, or by node name (ASCII case ignored); when
//!    it names several, this node first if it fits, else the best ranked of them.
//! 3. This node, if it fits.
//! 4. The best ranked member that fits, ranked by, in order:
//!    - the [`ALWAYS_ON`] tag first (a machine meant to stay up);
//!    - not on battery first (a laptop sleeps and roams);
//!    - more memory left after the deploy, counted in steps of [`HEADROOM_STEP_MB`] (the
//!      figures are noisy, so a few MB more does not outweigh the load);
//!    - lower load per core;
//!    - lower peer id, so the choice is deterministic: every node that sees the same facts
//!      picks the same member, whatever order they arrived in.
//! 5. Nowhere: every host with why it does not fit, this node first, then members by peer
//!    id, so a CLI can print the reasons.

pub mod place;
pub mod service;

pub use place::{ALWAYS_ON, HEADROOM_STEP_MB, HostFacts, Misfit, Need, Placement, RESERVE_MAX_MB, RESERVE_MIN_MB, choose, fits, memory_reserve_mb};
