//! The replicated claims state machine. (Being written: see /work/notes/claims-design.md.)
