//! The subcommands.

pub mod bench;
pub mod chaos;
pub mod client;
pub mod serve;
