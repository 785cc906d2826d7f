//! scoregate: an HTTPS scoring gateway for model backends, speaking the Azure Machine Learning
//! scoring URL shape (`https://<CNAME>/api/v1/service/<name>/score`).
//!
//! A request's path through the code, in order (ARCHITECTURE.md draws it):
//! `server` (accept, listener policy, TLS, HTTP/1.1 or HTTP/2) → `gateway` (the request's
//! phases: syntax, route, policy, `auth`, admit) → `proxy` (backend choice, header rules, pooled
//! backend connections) → back through `gateway` (respond; observe records metrics and the
//! access log when the response ends or the client goes). `client` decides who the client is.
//! Shared state lives in `state` (the snapshot swapped on reload, and what outlives it);
//! `config`, `tls` and `store` feed it; `reload` replaces it; `admin` is the operators' API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod auth;
pub mod bench;
pub mod certgen;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod error;
pub mod files;
pub mod gateway;
pub mod limit;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod route;
pub mod sample_model;
pub mod server;
pub mod signals;
pub mod state;
pub mod store;
pub mod tls;
