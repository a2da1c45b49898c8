//! keel-workflows: Keel's built-in workflows, above all the plan / execute /
//! reflect agent.
//!
//! Not built yet: see the agent workflow issue.

pub use keel_worker as worker;
