//! The deployment phase (contract §8), between authenticate and limit: which deployment of the
//! service serves the request. A request that pins one (`azureml-model-deployment: NAME`,
//! exact match, a pinnable deployment) goes there whatever its weight; any other is drawn by
//! weight from the split in force (`state::Routing`, a table built with the snapshot). From
//! here on every answer names the deployment (`respond`), and the request counts under it.

use http::HeaderMap;

use super::record::Record;
use crate::error::GatewayError;
use crate::proxy::headers::AZUREML_MODEL_DEPLOYMENT;
use crate::state::Service;

/// The deployment chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    /// Index in `Service::deployments`.
    pub index: usize,
    /// Named by the client's header (never mirrored).
    pub pinned: bool,
}

/// Chooses the deployment: the pinned one (404 `DeploymentNotFound` when the header names no
/// pinnable deployment; the answer lists none), else a draw by weight (404 `NoTraffic` when
/// every weight is 0). The draw ignores health: a deployment without a live backend answers
/// 502 from the forward phase.
pub fn choose(svc: &Service, h: &HeaderMap, rec: &mut Record) -> Result<Chosen, GatewayError> {
    let chosen = match h.get(AZUREML_MODEL_DEPLOYMENT) {
        Some(pin) => Chosen {
            index: svc
                .deployments
                .iter()
                .position(|d| d.pinnable && d.header == pin)
                .ok_or(GatewayError::DeploymentNotFound)?,
            pinned: true,
        },
        None => Chosen {
            index: svc.routing.draw().ok_or(GatewayError::NoTraffic)?,
            pinned: false,
        },
    };
    rec.deployment = chosen.index + 1;
    Ok(chosen)
}
