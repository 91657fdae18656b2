//! The `executor.access.v1.TenantAccess` gRPC service on the internal socket: renters' keys
//! per container, for executor-api (the miner's signed calls and creates with keys). Every
//! error carries a [`Reason`]; storage and OS text reaches only the log.

use std::sync::Arc;

use common::proto::access::v1 as pb;
use common::proto::access::v1::tenant_access_server::TenantAccess as TenantApi;
use common::reason::{Reason, Refusal};
use tonic::{Request, Response, Status};

use crate::tenant::access::{TenantError, Tenants};
use crate::tenant::keys::{AddError, TenantKey};

/// The service.
#[derive(Debug, Clone)]
pub struct Api {
    tenants: Arc<Tenants>,
}

impl Api {
    pub fn new(tenants: Arc<Tenants>) -> Self {
        Self { tenants }
    }

    fn keys(&self, container: &str, keys: Vec<TenantKey>, sessions_closed: u32) -> pb::ContainerKeys {
        pb::ContainerKeys {
            container_id: container.to_owned(),
            keys: keys
                .into_iter()
                .map(|k| pb::ContainerKey {
                    fingerprint: k.fingerprint,
                    public_key: k.public_key,
                    comment: k.comment,
                    added_at: k.added_at,
                })
                .collect(),
            ssh_command: self.tenants.ssh_command(container),
            sessions_closed,
        }
    }
}

/// The status of an error.
fn refusal(e: TenantError) -> Status {
    let refusal = match &e {
        TenantError::NoContainerId | TenantError::Key(_) | TenantError::Add(AddError::Key { .. } | AddError::None) => {
            Refusal::new(Reason::InvalidField, e.to_string())
        }
        TenantError::Add(AddError::TooMany { .. }) => Refusal::new(Reason::LimitReached, e.to_string()),
        TenantError::NoContainer(_) | TenantError::NoKey { .. } => Refusal::new(Reason::NotFound, e.to_string()),
        TenantError::Runtime(_) => {
            Refusal::new(Reason::PeerUnavailable, "container-runtime did not answer; retry shortly").with_cause(&e)
        }
        TenantError::Add(AddError::Store(_)) => {
            Refusal::new(Reason::Storage, "cannot store the keys; see the executor log").with_cause(&e)
        }
        TenantError::StoreRemoval(_) => Refusal::new(
            Reason::Storage,
            "the key is removed and its sessions closed, but the removal cannot be stored; see the executor log",
        )
        .with_cause(&e),
    };
    if let Some(cause) = &refusal.cause {
        tracing::error!(reason = %refusal.reason, cause = %cause, "{}", refusal.message);
    }
    refusal.into_status()
}

#[tonic::async_trait]
impl TenantApi for Api {
    async fn check_container_keys(
        &self,
        request: Request<pb::AddContainerKeyRequest>,
    ) -> Result<Response<pb::ContainerKeys>, Status> {
        let r = request.into_inner();
        let keys = self.tenants.check(&r.ssh_public_keys).map_err(refusal)?;
        Ok(Response::new(self.keys(&r.container_id, keys, 0)))
    }

    async fn add_container_key(
        &self,
        request: Request<pb::AddContainerKeyRequest>,
    ) -> Result<Response<pb::ContainerKeys>, Status> {
        let r = request.into_inner();
        let keys = self.tenants.add(&r.container_id, &r.ssh_public_keys).await.map_err(refusal)?;
        Ok(Response::new(self.keys(&r.container_id, keys, 0)))
    }

    async fn remove_container_key(
        &self,
        request: Request<pb::RemoveContainerKeyRequest>,
    ) -> Result<Response<pb::ContainerKeys>, Status> {
        let r = request.into_inner();
        let (keys, closed) = self.tenants.remove(&r.container_id, &r.ssh_public_key).map_err(refusal)?;
        Ok(Response::new(self.keys(&r.container_id, keys, closed)))
    }

    async fn list_container_keys(
        &self,
        request: Request<pb::ListContainerKeysRequest>,
    ) -> Result<Response<pb::ContainerKeys>, Status> {
        let r = request.into_inner();
        let keys = self.tenants.list(&r.container_id).await.map_err(refusal)?;
        Ok(Response::new(self.keys(&r.container_id, keys, 0)))
    }
}
