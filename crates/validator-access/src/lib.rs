//! validator-access: grants of short-lived SSH access to validators and the embedded SSH
//! server that honours them.
//!
//! This build serves health, reflection and metrics only; grants, the SSH server and the API of
//! `proto/executor/validator_access.proto` are not served yet, so no validator can log in.

use common::ServiceName;
use common::service::{BoxError, Service, ServiceContext};

/// The validator-access service.
#[derive(Debug)]
pub struct ValidatorAccess;

impl Service for ValidatorAccess {
    const NAME: ServiceName = ServiceName::ValidatorAccess;

    async fn build(_ctx: &ServiceContext) -> Result<Self, BoxError> {
        Ok(Self)
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}
