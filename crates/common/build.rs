//! Compiles `proto/` with protox (pure Rust, no `protoc`) and writes the descriptor set that
//! the servers register for reflection. Without the `service` feature (the standalone
//! attestor) there are no protos to compile.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "service")]
    compile_protos()?;
    Ok(())
}

#[cfg(feature = "service")]
fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    use std::path::PathBuf;

    use prost::Message;

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "executor/launcher.proto",
        "executor/container_runtime.proto",
        "executor/gpu_monitor.proto",
        "executor/validator_access.proto",
        "executor/executor_api.proto",
        "health/v1/health.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("executor_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
