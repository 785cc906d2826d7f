//! Token auth (JWTs): placeholder until token mode lands; `state` refuses `auth = "token"`.

use crate::error::AuthFailure;

pub struct ServiceTokens;

impl ServiceTokens {
    pub fn verify(&self, _credential: &[u8]) -> Result<(), AuthFailure> {
        Err(AuthFailure::InvalidToken)
    }
}
