//! Deployments' mirrored traffic (contract §8): copies of live scoring requests sent to a mirror
//! deployment, and the comparison of each mirrored answer with the live one.
//!
//! `compare` is the comparison, pure: two answers and a tolerance in, a verdict out.

pub mod compare;
