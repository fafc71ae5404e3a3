//! Generates the CRI v1 gRPC clients (`RuntimeService`, `ImageService`) with protoc for the
//! remote runtime (src/remote).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_protos(&["proto/cri/api.proto"], &["proto"])?;
    Ok(())
}
