//! Checks that only make sense on the node itself, run before anything is applied there.

use super::{error::Problems, ClusterState, Problem};

/// The node exists in the state, and every local endpoint's sandbox is there to plumb.
pub fn check_for_node(state: &ClusterState, node: &str) -> Result<(), Vec<Problem>> {
    let mut p = Problems::default();
    if state.node(node).is_none() {
        p.add(format!("nodes \"{node}\""), "name", "this node is not in the state file");
    }
    for ep in state.local_endpoints(node) {
        let entry = format!("endpoints \"{}\"", ep.name);
        match &ep.netns {
            None => p.add(&entry, "netns", "required for an endpoint on this node (the sandbox to plumb)"),
            Some(ns) => match crate::netns::is_netns(ns) {
                Ok(true) => {}
                Ok(false) => p.add(&entry, "netns", format!("{} is not a network namespace", ns.display())),
                Err(_) => p.add(&entry, "netns", format!("{} does not exist on this node", ns.display())),
            },
        }
    }
    p.into_result(())
}
