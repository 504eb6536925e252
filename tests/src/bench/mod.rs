//! `cargo xtask bench`: our datapath measured beside the kernel path it replaces, in one run.
//! Each section adds rows to one report; a row names the row it is compared with.

pub mod control;
pub mod cpu;
pub mod gwbridge;
pub mod mesh;
pub mod overlay;
pub mod progrun;
pub mod report;
pub mod services;
pub mod store;

/// How a bench run was asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opts {
    /// A smoke run: short durations, numbers are rough.
    pub quick: bool,
    /// Also write one flame graph per overlay datapath.
    pub flame: bool,
}

/// Where reports, charts and flame graphs go.
pub fn out_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}
