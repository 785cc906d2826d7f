//! The deployment phase (contract §8), between authenticate and limit: which deployment of the
//! service serves the request. A request that pins one (`azureml-model-deployment: NAME`,
//! exact match, a pinnable deployment) goes there whatever its weight; any other is drawn by
//! weight from the split in force (`state::Routing`, a table built with the snapshot). From
//! here on every answer names the deployment (`respond`), and the request counts under it.

use std::time::Duration;

use http::{HeaderValue, Response, header};
use tokio::sync::oneshot;

use super::record::Record;
use crate::error::GatewayError;
use crate::mirror::{CopyRequest, Drawn, Job, Live, Tee};
use crate::proxy::Target;
use crate::proxy::body::Copied;
use crate::proxy::pool::PooledBody;
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
/// `pin` is the request's `azureml-model-deployment` header.
pub fn choose(
    svc: &Service,
    pin: Option<&HeaderValue>,
    rec: &mut Record,
) -> Result<Chosen, GatewayError> {
    let chosen = match pin {
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

/// A request drawn for mirroring: the copy's headers, taken before the request is forwarded.
pub struct MirrorPlan {
    drawn: Drawn,
    request: CopyRequest,
}

/// Whether this request is mirrored (contract §8): an unpinned `score` request of a service
/// with a mirror, with probability its share. `swagger.json` and pinned requests never are.
pub fn mirror_draw(
    svc: &Service,
    chosen: Chosen,
    target: Target,
    parts: &http::request::Parts,
) -> Option<MirrorPlan> {
    if chosen.pinned || target != Target::Score {
        return None;
    }
    let m = svc.mirror.as_ref()?;
    svc.routing.mirror_draw()?;
    Some(MirrorPlan {
        request: CopyRequest::from(parts, m),
        drawn: Drawn::new(m.clone()),
    })
}

impl MirrorPlan {
    /// The request body is copied up to this size.
    pub fn max_body(&self) -> u64 {
        self.drawn.mirror().settings.max_body
    }

    /// The live head has arrived: the copy is queued (it waits for the request body's end
    /// itself), and the live body is passed through a tee for the comparison.
    pub fn submit(
        self,
        resp: Response<PooledBody>,
        request_body: Option<oneshot::Receiver<Copied>>,
        live_head: Duration,
        request_id: &HeaderValue,
    ) -> Response<Tee<PooledBody>> {
        let Some(body) = request_body else {
            return resp.map(Tee::plain);
        };
        let mirror = self.drawn.take();
        let status = resp.status().as_u16();
        let json = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::mirror::is_json_media_type);
        let (parts, b) = resp.into_parts();
        let (tee, live_body) = Tee::copying(b, mirror.settings.max_body);
        mirror.submit(Job {
            request: self.request,
            body,
            live: Live {
                status,
                json,
                head: live_head,
                body: live_body,
            },
            request_id: request_id.clone(),
        });
        Response::from_parts(parts, tee)
    }
}
