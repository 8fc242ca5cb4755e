//! Compiles `shim.proto` with protox. Agent messages it reuses come from the
//! `vmpod-agent-proto` crate rather than being generated twice.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/shim.proto";
    let agent_dir = "../agent-proto/proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed={agent_dir}/agent.proto");
    let fds = protox::compile([proto], ["proto", agent_dir])?;
    tonic_prost_build::configure()
        .extern_path(".vmpod.agent.v1", "::vmpod_agent_proto::v1")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
