//! Attachments: decapsulation on the underlay (XDP or TC), the container-side program on each
//! host-side veth, the gwbridge program on each container's gwbridge port. Each is held by a pinned link; on restart the program inside the link is
//! replaced atomically, so forwarding never stops.

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
    SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use overlay_common::maps::*;

use super::{pins::remove_pin, Datapath, DecapMode};

impl Datapath {
    fn link_pin(&self, name: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| d.join("links").join(name))
    }

    fn existing_link(pin: &Path) -> Result<Option<FdLink>> {
        match PinnedLink::from_pin(pin) {
            Ok(l) => Ok(Some(FdLink::from(l))),
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
        }
    }

    /// Replace the program inside the link pinned at `pin`, if there is one that still works.
    /// A link whose interface was deleted ("severed") cannot be updated: it is unpinned and
    /// `false` returned, so the caller attaches afresh.
    fn replace_pinned(pin: Option<&Path>, replace: impl FnOnce(FdLink) -> Result<()>) -> Result<bool> {
        let Some(pin) = pin else { return Ok(false) };
        let Some(link) = Self::existing_link(pin)? else { return Ok(false) };
        match replace(link) {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!("pinned link {} is unusable ({e:#}); attaching afresh", pin.display());
                remove_pin(pin)?;
                Ok(false)
            }
        }
    }

    /// Attach the decapsulation program to the underlay in `mode`, removing the other mode's
    /// attachment if there is one.
    pub fn attach_underlay(&mut self, ifname: &str, mode: DecapMode) -> Result<()> {
        let (xdp_pin, tc_pin) = (self.link_pin("underlay-xdp"), self.link_pin("underlay-tc"));
        match mode {
            DecapMode::Xdp => {
                if let Some(p) = &tc_pin {
                    remove_pin(p)?;
                }
                let prog: &mut Xdp = self.ebpf.program_mut(PROG_UNDERLAY_XDP).context("no xdp program")?.try_into()?;
                let replaced = Self::replace_pinned(xdp_pin.as_deref(), |link| {
                    prog.attach_to_link(XdpLink::try_from(link)?).context("replacing the XDP program")?;
                    Ok(())
                })?;
                if replaced {
                    return Ok(());
                }
                let id =
                    prog.attach(ifname, XdpMode::default()).with_context(|| format!("attaching XDP to {ifname}"))?;
                if let Some(pin) = &xdp_pin {
                    let link: FdLink = prog.take_link(id)?.try_into()?;
                    link.pin(pin).with_context(|| format!("pinning {}", pin.display()))?;
                }
            }
            DecapMode::Tc => {
                if let Some(p) = &xdp_pin {
                    remove_pin(p)?;
                }
                self.attach_tc(PROG_UNDERLAY_TC, ifname, tc_pin)?;
            }
        }
        Ok(())
    }

    /// Detach decapsulation from whatever interface it is on (the node's address moved to
    /// another interface: the pinned links still point at the old one).
    pub fn detach_underlay(&mut self) -> Result<()> {
        for name in ["underlay-xdp", "underlay-tc"] {
            if let Some(p) = self.link_pin(name) {
                remove_pin(&p)?;
            }
        }
        Ok(())
    }

    fn attach_tc(&mut self, prog_name: &str, ifname: &str, pin: Option<PathBuf>) -> Result<()> {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(prog_name).context("no tc program")?.try_into()?;
        let replaced = Self::replace_pinned(pin.as_deref(), |link| {
            prog.attach_to_link(SchedClassifierLink::try_from(link)?).context("replacing the TC program")?;
            Ok(())
        })?;
        if replaced {
            return Ok(());
        }
        let id = prog.attach(ifname, TcAttachType::Ingress).with_context(|| format!("attaching TC to {ifname}"))?;
        if let Some(pin) = &pin {
            let link: FdLink = prog.take_link(id)?.try_into()?;
            link.pin(pin).with_context(|| format!("pinning {}", pin.display()))?;
        }
        Ok(())
    }

    fn container_pin(&self, ifindex: u32) -> Option<PathBuf> {
        self.link_pin(&format!("container-{ifindex}"))
    }

    /// Attach the container-side program to a host-side veth (TC ingress: what the container sends).
    pub fn attach_container(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let pin = self.container_pin(ifindex);
        self.attach_tc(PROG_FROM_CONTAINER, ifname, pin)
    }

    /// Attach the gwbridge program to the host end of a container's gwbridge interface.
    pub fn attach_gwport(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let pin = self.link_pin(&format!("gw-{ifindex}"));
        self.attach_tc(PROG_FROM_GWBRIDGE, ifname, pin)
    }

    /// Forget container and gwbridge attachments other than `keep` (their veths are gone or going).
    pub fn prune_container_links(&self, keep: &HashSet<u32>) -> Result<()> {
        let Some(dir) = self.pin_dir.as_ref().map(|d| d.join("links")) else { return Ok(()) };
        for e in std::fs::read_dir(&dir)? {
            let name = e?.file_name().to_string_lossy().to_string();
            let idx = name.strip_prefix("container-").or_else(|| name.strip_prefix("gw-"));
            if let Some(idx) = idx.and_then(|s| s.parse::<u32>().ok()) {
                if !keep.contains(&idx) {
                    remove_pin(&dir.join(&name))?;
                }
            }
        }
        Ok(())
    }
}
