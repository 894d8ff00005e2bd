//! Compiles `kat/v1alpha1/*.proto` with tonic/prost and adds proto3 JSON (pbjson)
//! serialisation for the REST side. Needs `protoc` and the well-known types
//! (`scripts/install-deps.sh` installs both).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "kat/v1alpha1/meta.proto",
    "kat/v1alpha1/cluster.proto",
    "kat/v1alpha1/workload.proto",
    "kat/v1alpha1/namespace.proto",
    "kat/v1alpha1/node.proto",
    "kat/v1alpha1/instance.proto",
    "kat/v1alpha1/event.proto",
    "kat/v1alpha1/token.proto",
    "kat/v1alpha1/pki.proto",
    "kat/v1alpha1/api.proto",
    "kat/v1alpha1/node_api.proto",
    "kat/v1alpha1/agent_api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("kat_descriptor.bin");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let mut includes = vec!["."];
    // Debian's libprotobuf-dev puts the well-known types here; protoc may not find them alone.
    if std::path::Path::new("/usr/include/google/protobuf/timestamp.proto").exists() {
        includes.push("/usr/include");
    }
    let has_protoc = std::env::var_os("PROTOC").is_some()
        || std::process::Command::new("protoc")
            .arg("--version")
            .output()
            .is_ok();
    if !has_protoc {
        return Err(
            "protoc not found: run scripts/install-deps.sh (Debian: protobuf-compiler \
                    libprotobuf-dev) or set PROTOC"
                .into(),
        );
    }

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .btree_map(".")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(PROTOS, &includes)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map([".".to_owned()])
        .build(&[".kat.v1alpha1"])?;
    Ok(())
}
