//! The status topic: writing a run's updates ([`writer`], which numbers them) and reading
//! them back: the dedup ledger ([`dedup`]), the folded run view ([`view`], of
//! [`run::RunState`]s, listed by [`listing`]) and one line per update for people
//! ([`display`]).

pub mod dedup;
pub mod display;
pub mod fingerprint;
pub mod listing;
pub mod run;
pub mod view;
pub mod writer;
