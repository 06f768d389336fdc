//! Generates the gRPC code, the proto3 JSON mapping (pbjson) for the manifest, and a file
//! descriptor set that the servers hand to gRPC reflection.

use std::{env, error::Error, path::PathBuf};

const PROTOS: &[&str] = &[
    "kappa/model/v1/model.proto",
    "kappa/registry/v1/registry.proto",
    "kappa/trainer/v1/trainer.proto",
    "kappa/predictor/v1/predictor.proto",
    "kappa/events/v1/events.proto",
    "kappa/fleet/v1/fleet.proto",
    "inference/grpc_predict_v2.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("kappa_descriptor.bin");

    // A vendored protoc keeps the build free of system packages. PROTOC still wins when set.
    if env::var_os("PROTOC").is_none() {
        set_protoc(protoc_bin_vendored::protoc_bin_path()?);
    }

    // tonic-prost-build 0.14 does not emit rerun-if-changed lines itself.
    println!("cargo:rerun-if-changed={}", root.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    // BTreeMap for map fields: listings, JSON and Debug output come out in a stable order.
    tonic_prost_build::configure()
        .btree_map(".")
        .file_descriptor_set_path(&descriptor_path)
        .compile_protos(&files, &[root])?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".kappa"])?;
    Ok(())
}

fn set_protoc(path: PathBuf) {
    // `set_var` is unsafe in edition 2024 only because other threads may read the environment;
    // a build script has no other threads at this point.
    #[expect(unsafe_code, reason = "single-threaded build script")]
    unsafe {
        env::set_var("PROTOC", path);
    }
}
