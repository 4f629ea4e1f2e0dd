//! Compiles the etcd KV subset used by the comparison client (protox: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    let descriptors = protox::compile(["proto/etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(descriptors)?;
    Ok(())
}
