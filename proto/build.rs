//! Compiles `hodei/v1/*.proto` with protox (a pure-Rust protobuf compiler, so
//! no system `protoc` is needed) and generates prost messages plus tonic
//! clients and servers.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "hodei/v1/common.proto",
    "hodei/v1/job.proto",
    "hodei/v1/worker.proto",
    "hodei/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let files = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `WorkerService.Connect` would clash with the generated
        // `connect(endpoint)` constructor: clients are built from a
        // `tonic::transport::Channel` with `new` instead.
        .build_transport(false)
        // Smaller per-call buffers than tonic's default (see `codec`).
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(files)?;
    Ok(())
}
