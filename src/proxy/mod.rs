//! The backend side of a request: choosing a backend of an upstream (`upstream`: backends, their
//! runtime state, least-outstanding choice and concurrency slots), connections to it (`pool`),
//! its health (`health`), the header rules (`headers`), the request body on its way (`body`),
//! and the forward itself (`forward`).
//!
//! This module knows nothing of snapshots, services or auth: the gateway hands it an
//! `Upstream`, `ForwardSettings` and the request.

pub mod backend;
pub mod body;
pub mod deadline;
pub mod forward;
pub mod headers;
pub mod health;
pub mod pool;
pub mod upstream;

pub use forward::{ForwardError, ForwardSettings, Forwarded, Target, forward};
