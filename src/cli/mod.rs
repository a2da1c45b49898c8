//! The subcommands.

pub mod client;
pub mod serve;
