//! Generates the gRPC code and the descriptor set (for reflection) from `proto/`.
//! protoc comes from the `protoc-bin-vendored` crate, so nothing needs installing by hand.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out_dir.join("simplebank_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("../proto/simplebank/v1/simple_bank.proto")],
            &[PathBuf::from("../proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
