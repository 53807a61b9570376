//! Compiles `proto/` (Envoy's rate-limit service, trimmed) into
//! `src/rls/generated/`: `rls-codegen <repo root>`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let proto = root.join("proto");
    let out = root.join("src/rls/generated");
    std::fs::create_dir_all(&out)?;
    let files = protox::compile(
        [proto.join("envoy/service/ratelimit/v3/rls.proto")],
        [&proto],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client needs only tonic's codegen, not its transport.
        .build_transport(false)
        .out_dir(&out)
        .include_file("mod.rs")
        .compile_fds(files)?;
    Ok(())
}
