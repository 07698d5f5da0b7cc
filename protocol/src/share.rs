//! One MCP server shared by many client sessions: who receives what the server sends.
//!
//! The node runs one child (a stdio MCP server) and many sessions talk to it. Request ids
//! and progress tokens are rewritten by the MCP library on the child's side; this table
//! makes the decisions the library cannot:
//!
//! - **Server-to-client requests** (sampling, elicitation, roots) go to the session whose
//!   request is in flight, the most recently started one when several are, among the
//!   sessions that declared the capability the request needs. None in flight: the request
//!   is refused with [`RouteError`], never sent to a session that did not cause it.
//! - **Log messages**: a session that set a level (`logging/setLevel`) receives every
//!   message at or above it. A session that never set one receives messages only while it
//!   has a request in flight (the server is logging about work it does for it). The child
//!   runs at the most verbose level any session asked for.
//! - **Resource subscriptions** are counted: the child is asked to subscribe for the
//!   first session and to unsubscribe when the last one leaves; updates go to subscribers.
//! - `list_changed` notifications go to every session.
//!
//! Everything is bounded: sessions per child and requests in flight per session.

use std::collections::{BTreeMap, BTreeSet};

/// A session of the shared child (unique per child, never reused).
pub type SessionId = u64;

/// Most sessions one child serves.
pub const MAX_SESSIONS: usize = 1024;
/// Most requests one session may have in flight at the child.
pub const MAX_IN_FLIGHT: usize = 256;

/// MCP log levels (RFC 5424 severities), least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl LogLevel {
    /// Every level, least severe first.
    pub const ALL: [LogLevel; 8] =
        [LogLevel::Debug, LogLevel::Info, LogLevel::Notice, LogLevel::Warning, LogLevel::Error, LogLevel::Critical, LogLevel::Alert, LogLevel::Emergency];

    /// The level's name in MCP (`"debug"` … `"emergency"`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Alert => "alert",
            LogLevel::Emergency => "emergency",
        }
    }

    /// Parses an MCP level name.
    pub fn parse(s: &str) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// Client capabilities a session declared in its `initialize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub sampling: bool,
    pub elicitation: bool,
    pub roots: bool,
}

/// What a server-to-client request needs from the session that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Sampling,
    Elicitation,
    Roots,
    /// A request of another kind: any session with a request in flight.
    Any,
}

impl Need {
    /// The capability a request method needs.
    pub fn of_method(method: &str) -> Need {
        match method {
            "sampling/createMessage" => Need::Sampling,
            "elicitation/create" => Need::Elicitation,
            "roots/list" => Need::Roots,
            _ => Need::Any,
        }
    }

    fn met_by(self, c: Caps) -> bool {
        match self {
            Need::Sampling => c.sampling,
            Need::Elicitation => c.elicitation,
            Need::Roots => c.roots,
            Need::Any => true,
        }
    }
}

/// Why a server-to-client request found no session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no client session has a request in flight, so none can answer {0}")]
    NoneInFlight(String),
    #[error("the client sessions with requests in flight did not declare the `{capability}` capability {method} needs")]
    NotCapable { method: String, capability: &'static str },
}

/// A session could not be opened or a request not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("this server already serves {MAX_SESSIONS} sessions")]
    Sessions,
    #[error("the session already has {MAX_IN_FLIGHT} requests in flight")]
    InFlight,
    #[error("no such session")]
    NoSession,
}

#[derive(Debug, Clone, Default)]
struct Sess {
    caps: Caps,
    level: Option<LogLevel>,
    /// Sequence numbers of its requests in flight at the child.
    in_flight: BTreeSet<u64>,
    subs: BTreeSet<String>,
}

/// What closing a session changes at the child.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closed {
    /// Resources nobody subscribes to any more: unsubscribe the child.
    pub unsubscribe: Vec<String>,
    /// The child's log level changed (to this; `None`: no session sets one).
    pub level: Option<Option<LogLevel>>,
}

/// The routing table of one shared child.
#[derive(Debug, Clone, Default)]
pub struct Table {
    sessions: BTreeMap<SessionId, Sess>,
    next_id: SessionId,
    next_seq: u64,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    /// Opens a session with the capabilities it declared.
    pub fn open(&mut self, caps: Caps) -> Result<SessionId, Full> {
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(Full::Sessions);
        }
        self.next_id += 1;
        self.sessions.insert(self.next_id, Sess { caps, ..Sess::default() });
        Ok(self.next_id)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every open session.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// Closes a session; says what the child must be told.
    pub fn close(&mut self, id: SessionId) -> Closed {
        let before = self.child_level();
        let Some(s) = self.sessions.remove(&id) else { return Closed::default() };
        let unsubscribe = s.subs.into_iter().filter(|uri| !self.sessions.values().any(|o| o.subs.contains(uri))).collect();
        let after = self.child_level();
        Closed { unsubscribe, level: (before != after).then_some(after) }
    }

    /// A request of `id` to the child starts; returns its sequence number for [`Table::end`].
    pub fn begin(&mut self, id: SessionId) -> Result<u64, Full> {
        let s = self.sessions.get_mut(&id).ok_or(Full::NoSession)?;
        if s.in_flight.len() >= MAX_IN_FLIGHT {
            return Err(Full::InFlight);
        }
        self.next_seq += 1;
        s.in_flight.insert(self.next_seq);
        Ok(self.next_seq)
    }

    /// The request `seq` of `id` has its answer (or was given up).
    pub fn end(&mut self, id: SessionId, seq: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.in_flight.remove(&seq);
        }
    }

    /// The session that must answer a server-to-client request of `method`.
    pub fn route(&self, method: &str) -> Result<SessionId, RouteError> {
        let need = Need::of_method(method);
        let busy: Vec<(u64, SessionId, Caps)> = self.sessions.iter().filter_map(|(id, s)| s.in_flight.last().map(|seq| (*seq, *id, s.caps))).collect();
        if busy.is_empty() {
            return Err(RouteError::NoneInFlight(method.to_string()));
        }
        busy.iter().filter(|(_, _, c)| need.met_by(*c)).max_by_key(|(seq, _, _)| *seq).map(|(_, id, _)| *id).ok_or_else(|| RouteError::NotCapable {
            method: method.to_string(),
            capability: match need {
                Need::Sampling => "sampling",
                Need::Elicitation => "elicitation",
                Need::Roots => "roots",
                Need::Any => "any",
            },
        })
    }

    /// `logging/setLevel` from `id`. Returns the child's new level when it changes.
    pub fn set_level(&mut self, id: SessionId, level: LogLevel) -> Option<LogLevel> {
        let before = self.child_level();
        if let Some(s) = self.sessions.get_mut(&id) {
            s.level = Some(level);
        }
        let after = self.child_level();
        if before != after { after } else { None }
    }

    /// The level the child should run at: the most verbose any session asked for.
    pub fn child_level(&self) -> Option<LogLevel> {
        self.sessions.values().filter_map(|s| s.level).min()
    }

    /// Sessions that receive a log message of `level`.
    pub fn log_targets(&self, level: LogLevel) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| match s.level {
                Some(l) => level >= l,
                None => !s.in_flight.is_empty(),
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// `resources/subscribe` from `id`: true when the child must be asked (first subscriber).
    pub fn subscribe(&mut self, id: SessionId, uri: &str) -> bool {
        let first = !self.sessions.values().any(|s| s.subs.contains(uri));
        match self.sessions.get_mut(&id) {
            Some(s) => {
                s.subs.insert(uri.to_string());
                first
            }
            None => false,
        }
    }

    /// `resources/unsubscribe` from `id`: true when the child must be told (last one gone).
    pub fn unsubscribe(&mut self, id: SessionId, uri: &str) -> bool {
        let had = self.sessions.get_mut(&id).is_some_and(|s| s.subs.remove(uri));
        had && !self.sessions.values().any(|s| s.subs.contains(uri))
    }

    /// Sessions subscribed to `uri`.
    pub fn subscribers(&self, uri: &str) -> Vec<SessionId> {
        self.sessions.iter().filter(|(_, s)| s.subs.contains(uri)).map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
#[path = "share_tests.rs"]
mod tests;
