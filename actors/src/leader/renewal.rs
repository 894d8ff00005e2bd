//! `RenewCertificate` (SPEC §13), as the leader handles it: a registered node that
//! asks with its current certificate gets a new one for a key it made; the CSR must
//! name the caller.

use std::net::IpAddr;

use kat_proto::v1alpha1::{RenewCertificateRequest, RenewCertificateResponse};

use super::context::{LeaderContext, speaks_for};
use super::join::sign_node_certificate;
use crate::state::{self, StateError, StateResult};

pub async fn renew_certificate(
    ctx: &LeaderContext,
    caller: &str,
    req: RenewCertificateRequest,
) -> StateResult<RenewCertificateResponse> {
    speaks_for(caller, &req.node_name, "renew")?;
    let (node, _) = state::nodes::read(ctx.store(), caller)
        .await
        .map_err(|e| match e {
            StateError::NotFound(_) => {
                StateError::NotFound(format!("node {caller:?} is not registered"))
            }
            other => other,
        })?;
    let address: IpAddr = node
        .spec
        .as_ref()
        .and_then(|s| s.advertise_address.parse().ok())
        .ok_or_else(|| StateError::Internal(format!("node {caller:?} has no advertise address")))?;
    let certificate_pem = sign_node_certificate(ctx, &req.csr_pem, caller, address)?;
    tracing::info!(node = %caller, "node certificate renewed");
    Ok(RenewCertificateResponse { certificate_pem })
}
