// Generates the msgbus.v1 messages (prost), their proto3 JSON mapping (pbjson) and the tonic
// client from the repository's proto file. protoc comes from the pinned protoc-bin-vendored
// crate, so a build never downloads anything.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let proto_root = PathBuf::from("../../../proto");
    let proto_file = proto_root.join("msgbus/v1/msgbus.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("msgbus_descriptor.bin");
    tonic_prost_build::configure()
        .build_server(false)
        // Sorted maps encode in key order, like the deterministic encoders of Python and Go.
        .btree_map(".")
        .file_descriptor_set_path(&descriptor_path)
        .compile_protos(&[proto_file], &[proto_root])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".msgbus.v1"])?;
    Ok(())
}
