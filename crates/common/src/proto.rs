//! Types and service stubs generated from `proto/` by `build.rs`.
#![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]

/// Encoded `FileDescriptorSet` of every `.proto` in `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/executor_descriptor.bin"));
/// What reflection on the public port describes: the public API and health files, and the files
/// they import without their (internal) services.
pub const PUBLIC_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/public_descriptor.bin"));

pub mod launcher {
    pub mod v1 {
        tonic::include_proto!("executor.launcher.v1");
    }
}
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("executor.runtime.v1");
    }
}
pub mod gpu {
    pub mod v1 {
        tonic::include_proto!("executor.gpu.v1");
    }
}
pub mod access {
    pub mod v1 {
        tonic::include_proto!("executor.access.v1");
    }
}
pub mod api {
    pub mod v1 {
        tonic::include_proto!("executor.api.v1");
    }
}
/// `health.v1.Health`, the executor guide's name for `grpc.health.v1.Health` (same messages).
pub mod health_alias {
    pub mod v1 {
        tonic::include_proto!("health.v1");
    }
}
