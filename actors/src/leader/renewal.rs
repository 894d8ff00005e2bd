//! `RenewCertificate` (SPEC §13), as the leader handles it: a registered node that
//! asks with its current certificate gets a new one for a key it made; the CSR must
//! name the caller. The node's record then lists the new certificate's key and the
//! one the caller asked with (so a node that crashed before writing the new pair can
//! still ask again with its old one); any other certificate of the node is refused
//! from then on.

use std::net::IpAddr;
use std::time::SystemTime;

use kat_proto::v1alpha1::{RenewCertificateRequest, RenewCertificateResponse};

use super::context::{LeaderContext, speaks_for};
use super::join::sign_node_certificate;
use crate::pki::ca::key_sha256_of_pem;
use crate::state::{self, StateError, StateResult};

/// `caller_key`: the public-key hash of the certificate the call came with (`None` in
/// process, where there is none).
pub async fn renew_certificate(
    ctx: &LeaderContext,
    caller: &str,
    caller_key: Option<&str>,
    req: RenewCertificateRequest,
    now: SystemTime,
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
    let new_key =
        key_sha256_of_pem(&certificate_pem).map_err(|e| StateError::Internal(e.to_string()))?;
    let keys: Vec<String> = std::iter::once(new_key)
        .chain(caller_key.map(str::to_owned))
        .collect();
    state::nodes::update(
        &ctx.leadership,
        caller,
        "CertificateRenewed",
        |node| {
            node.spec
                .get_or_insert_with(Default::default)
                .certificate_key_sha256 = keys.clone();
            Ok(
                "node certificate renewed; the one before it is accepted until the next renewal"
                    .to_owned(),
            )
        },
        now,
    )
    .await?;
    tracing::info!(node = %caller, "node certificate renewed");
    Ok(RenewCertificateResponse { certificate_pem })
}
