//! Compiles the .proto files under `proto/` into Rust.
//!
//! `protox` parses them in pure Rust, so building zongheng needs no system
//! `protoc`; `tonic-prost-build` then generates messages, clients and servers
//! from the resulting descriptor set. The encoded descriptor set is also
//! written to `OUT_DIR` for gRPC server reflection.

use std::path::PathBuf;

/// Import root: imports inside the files are relative to it.
const PROTO_ROOT: &str = "proto";

/// Every file we compile, in a fixed order so the output is reproducible.
const PROTO_FILES: &[&str] = &[
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/authpb/auth.proto",
    "proto/etcd/etcdserverpb/rpc.proto",
    "proto/etcd/v3lockpb/v3lock.proto",
    "proto/etcd/v3electionpb/v3election.proto",
    "proto/zongheng/peer/v1/peer.proto",
    "proto/zongheng/store/v1/store.proto",
];

/// Packages whose types the node stores in the Raft log (with bincode in serde
/// mode), so they need serde derives. A package path also matches every nested
/// message, enum and oneof. Only plain derives: bincode is not self-describing,
/// so attributes such as `untagged`, `flatten` or `skip_serializing_if` would
/// break decoding.
const SERDE_PACKAGES: &[&str] = &[".mvccpb", ".authpb", ".etcdserverpb"];

/// File name of the encoded descriptor set inside `OUT_DIR`.
const DESCRIPTOR_SET_FILE: &str = "zongheng_descriptor_set.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    // Source info carries the proto comments into the generated doc comments.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTO_FILES)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join(DESCRIPTOR_SET_FILE), compiler.encode_file_descriptor_set())?;

    let mut builder = tonic_prost_build::configure().build_server(true).build_client(true);
    for package in SERDE_PACKAGES {
        builder = builder.type_attribute(package, "#[derive(::serde::Serialize, ::serde::Deserialize)]");
    }
    builder.compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
