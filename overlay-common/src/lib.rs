//! Types shared by the kernel programs and the agent. Everything here is an ABI:
//! `#[repr(C)]`, explicit padding, and the same layout on both sides.
#![no_std]

pub mod maps;
pub mod stats;
pub mod vxlan;
