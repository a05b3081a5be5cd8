//! Compiles the gRPC definitions in `proto/` with tonic/prost (uses `protoc`,
//! installed by scripts/install-deps) and records a descriptor set for gRPC
//! server reflection; builds the CPU harness of the CUDA kernels' arithmetic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("lpworker_descriptor.bin"))
        // Ordered maps encode deterministically (sorted keys), like go-livepeer's
        // and protobuf's deterministic serialization.
        .btree_map(".")
        .compile_protos(
            &["proto/lpworker/v1/worker.proto", "proto/net/lp_rpc.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");

    // The CUDA kernels' per-pixel arithmetic, built for the CPU so tests can
    // compare the very same source with the Rust reference (no GPU needed).
    cc::Build::new()
        .cpp(true)
        .file("kernels/harness.cpp")
        .include("kernels")
        .flag_if_supported("-ffp-contract=off")
        .opt_level(2)
        .compile("lpw_kernel_harness");
    println!("cargo:rerun-if-changed=kernels");
    Ok(())
}
