//! # pilot-sim
//!
//! A deterministic network of `pilot_proto` nodes in memory: one seed, virtual
//! time, and a chain of seeded fault rules. Filled in by the simulator issue.
