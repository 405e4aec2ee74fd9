//! Builds `interceptor-ebpf` for bpfel-unknown-none and places the object in OUT_DIR, where
//! `src/ebpf.rs` embeds it. Uses Debian's rustc-web toolchain (linked into rustup as
//! `debian-web` by scripts/setup.sh) because it ships the core sources that build-std needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let toolchain =
        std::env::var("INTERCEPTOR_EBPF_TOOLCHAIN").unwrap_or_else(|_| "debian-web".into());
    println!("cargo:rerun-if-env-changed=INTERCEPTOR_EBPF_TOOLCHAIN");
    let metadata_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("interceptor-ebpf");
    let root_dir = metadata_root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let package = aya_build::Package {
        name: "interceptor-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)).context(
        "building the eBPF programs failed; run scripts/setup.sh (Debian rustc-web, rust-web-src, bpf-linker)",
    )
}
