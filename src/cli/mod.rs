//! The subcommands.

pub mod bench;
pub mod chaos;
mod chaos_sdk;
pub mod client;
pub mod serve;
