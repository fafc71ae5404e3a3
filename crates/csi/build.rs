//! Generates the CSI v1 and plugin registration gRPC code (clients and servers) with protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/csi.proto", "proto/pluginregistration.proto"], &["proto"])?;
    Ok(())
}
