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
    std::fs::write(out.join("public_descriptor.bin"), public_descriptors(&fds).encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

/// What reflection on the public port may describe: the public files, and the files they import
/// with their services removed (the public API's messages live there, the internal RPCs do not
/// belong on the network). Files nothing public imports (the launcher's) are left out.
#[cfg(feature = "service")]
fn public_descriptors(all: &prost_types::FileDescriptorSet) -> prost_types::FileDescriptorSet {
    const PUBLIC: [&str; 2] = ["executor/executor_api.proto", "health/v1/health.proto"];
    let mut needed: Vec<String> = PUBLIC.iter().map(|f| (*f).to_owned()).collect();
    let mut i = 0;
    while i < needed.len() {
        if let Some(file) = all.file.iter().find(|f| f.name() == needed[i]) {
            for dep in &file.dependency {
                if !needed.contains(dep) {
                    needed.push(dep.clone());
                }
            }
        }
        i += 1;
    }
    let file = all
        .file
        .iter()
        .filter(|f| needed.iter().any(|n| n == f.name()))
        .cloned()
        .map(|mut f| {
            if !PUBLIC.contains(&f.name()) {
                f.service.clear();
            }
            f
        })
        .collect();
    prost_types::FileDescriptorSet { file }
}
