//! scoregate: an HTTPS scoring gateway for model backends, speaking the Azure Machine Learning
//! scoring URL shape (`https://<CNAME>/api/v1/service/<name>/score`).
//!
//! A request's path through the code, in order:
//! `server` (accept, listener policy, TLS, HTTP/1.1 or HTTP/2) → `gateway::handle` (route, service
//! policy, `auth`, admission) → `proxy` (backend choice, header rules, pooled backend connections) → back through
//! `gateway` (response headers, `metrics`, access log). Shared state lives in `state` (the
//! snapshot swapped on reload); `config` and `tls` build it; `admin` is the operators' API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod auth;
pub mod bench;
pub mod certgen;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod route;
pub mod sample_model;
pub mod serve;
pub mod server;
pub mod signals;
pub mod state;
pub mod tls;
