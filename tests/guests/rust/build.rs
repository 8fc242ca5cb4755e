//! Links every guest binary as a static, non-PIE ELF at 1 MiB (guest.ld),
//! with no C runtime: `_start` comes from the library (src/entry.rs).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    println!("cargo:rerun-if-changed=guest.ld");
    println!("cargo:rerun-if-changed=build.rs");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        &format!("-Wl,-T,{dir}/guest.ld"),
        "-Wl,--undefined=_start",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=0x1000",
        "-Wl,-z,noexecstack",
    ] {
        println!("cargo:rustc-link-arg={arg}");
    }
}
