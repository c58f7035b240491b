//! Compiles `proto/privault/v1/*.proto` with protox (no protoc binary needed), keeps the encoded
//! file descriptor set for gRPC server reflection, and generates the messages' proto3 JSON
//! mapping (pbjson) for the CLI.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Messages that carry values or raw subject ids: their `Debug` is written by hand, redacted.
const REDACTED_DEBUG: &[&str] = &[
    "privault.v1.PutFieldsRequest",
    "privault.v1.GetFieldsRequest",
    "privault.v1.DeleteFieldsRequest",
    "privault.v1.ShredSubjectRequest",
    "privault.v1.FieldResult",
    "privault.v1.SetConsentRequest",
    "privault.v1.RecordSignalRequest",
    "privault.v1.GetConsentsRequest",
    "privault.v1.AuditQueryRequest",
    "privault.v1.ExportSubjectRequest",
    "privault.v1.ExportedField",
    "privault.v1.DerivedView",
    "privault.v1.BatchGetFieldsRequest",
    "privault.v1.SubjectResult",
    "privault.v1.FindSubjectRequest",
    "privault.v1.FindSubjectResponse",
    "privault.v1.RotateSubjectKeyRequest",
    "privault.v1.AddCanaryRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut protos: Vec<PathBuf> = fs::read_dir("proto/privault/v1")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("privault_descriptor.bin"), fds.encode_to_vec())?;

    let descriptors = fds.encode_to_vec();
    tonic_prost_build::configure()
        .skip_debug(REDACTED_DEBUG.iter().copied())
        .compile_fds(fds)?;
    // serde for every message, in the proto3 JSON mapping: the CLI's `--json` output.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".privault.v1"])?;
    Ok(())
}
