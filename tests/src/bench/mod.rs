//! `cargo xtask bench`: our datapath measured beside the kernel path it replaces, in one run.
//! Each section adds rows to one report; a row names the row it is compared with.

pub mod control;
pub mod cpu;
pub mod overlay;
pub mod progrun;
pub mod report;
