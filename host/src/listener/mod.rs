//! An InfluxDB-compatible HTTP listener ("relay"): clients that write to
//! InfluxDB 1.x (`POST /write`) or 2.x (`POST /api/v2/write`) can write
//! here instead, and get InfluxDB's status codes and error bodies back.
//!
//! This module is the HTTP front only. What happens to the points is the
//! [`Acceptor`]'s business: the listener authenticates the request, checks
//! its parameters, reads and inflates the body within bounds, calls
//! [`Acceptor::accept`] and answers from its [`Accepted`]. Start it with
//! [`serve`]; configure it with [`ListenerConfig::from_pairs`] (keys and
//! defaults in [`config`]).
//!
//! Endpoints: `GET|HEAD /ping` (`204`), `GET /health` (2.x's JSON),
//! `POST /write`, `POST /api/v2/write`; other paths `404`, other methods
//! `405`.

mod acceptor;
mod auth;
mod body;
pub mod config;
mod endpoints;
mod query;
mod reply;
mod server;

pub use acceptor::{Accepted, Acceptor, Precision, Rejected, Target, Write};
pub use config::{ListenerConfig, Secret, User, TRANSPORT};
pub use server::serve;

#[cfg(test)]
mod tests;
