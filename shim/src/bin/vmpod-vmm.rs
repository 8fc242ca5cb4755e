//! The built-in VMM as its own small process: see `vmpod_shim::vmm::cli`.

fn main() -> std::process::ExitCode {
    vmpod_shim::vmm::cli::main()
}
