//! Generates the gRPC code and the descriptor sets (for reflection) from `proto/`: one per API,
//! so the public listener's reflection never lists the admin service.
//! protoc comes from the `protoc-bin-vendored` crate, so nothing needs installing by hand.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let well_known = protoc_bin_vendored::include_path()?;
    for (proto, descriptor) in [
        (
            "simplebank/v1/simple_bank.proto",
            "simplebank_descriptor.bin",
        ),
        (
            "simplebank/admin/v1/queue_admin.proto",
            "simplebank_admin_descriptor.bin",
        ),
    ] {
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        tonic_prost_build::configure()
            // Malformed requests are INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
            .codec_path("crate::codec::StrictCodec")
            .file_descriptor_set_path(out_dir.join(descriptor))
            .compile_with_config(
                config,
                &[PathBuf::from("../proto").join(proto)],
                &[PathBuf::from("../proto"), well_known.clone()],
            )?;
    }
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
