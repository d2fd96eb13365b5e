//! The `switchyard` command's subcommands that are more than a call into the library.
//! Binary only: nothing in the library imports this.

pub mod automations;
pub mod bench;
pub mod demo;
pub mod runs;
pub mod trigger;
