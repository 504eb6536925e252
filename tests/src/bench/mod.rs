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

/// Polls the pinned endpoints map until it holds `key` (every 100 µs, up to 10 s): how long
/// after `since` it appeared. How the control-plane and store sections see a change land.
pub(crate) fn until_in_map(
    map: &aya::maps::HashMap<
        &aya::maps::MapData,
        overlay_common::maps::EndpointKey,
        overlay_common::maps::EndpointInfo,
    >,
    key: &overlay_common::maps::EndpointKey,
    since: std::time::Instant,
) -> Option<std::time::Duration> {
    loop {
        if map.get(key, 0).is_ok() {
            return Some(since.elapsed());
        }
        if since.elapsed() > std::time::Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}
