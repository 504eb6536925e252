//! The agent under an operator's mistakes and a host changing beneath it (issue 7, items 5-11):
//! half-written files, one endpoint that cannot be plumbed, sandboxes recreated, the underlay
//! recreated or missing, two agents for one node, a sandbox path that is a FIFO, and the window
//! between creating a veth and filtering it. Each test fails on an agent without the fix.

use std::{io::Write as _, path::Path, process::Command, time::Duration};

use overlay::{
    agent::{state_hash, Paths, Record},
    datapath::Counters,
    plumb::host_veth_name,
};
use overlay_common::stats::DropReason;
use overlay_tests::{overlay_bin, wait_for, Cluster, ClusterSpec, Netns};

fn counters(c: &Cluster, node: &str) -> Counters {
    Counters::from_pins(&Paths::new(&c.run_dir.path, node).pins).unwrap()
}

fn record(c: &Cluster, node: &str) -> Record {
    Record::load(&Paths::new(&c.run_dir.path, node).record_file()).unwrap().unwrap()
}

fn endpoint_block(name: &str, node: &str, ip: &str, netns: &Path) -> String {
    format!(
        "[[endpoints]]\nname = \"{name}\"\nnetwork = \"app-net\"\nnode = \"{node}\"\nip = \"{ip}\"\nnetns = \"{}\"\n\n",
        netns.display()
    )
}

/// The state text without one endpoint's table.
fn without(text: &str, endpoint: &str) -> String {
    let needle = format!("name = \"{endpoint}\"");
    text.split("[[endpoints]]").filter(|b| !b.contains(&needle)).collect::<Vec<_>>().join("[[endpoints]]")
}

fn link_is_up(ns: &Netns, ifname: &str) -> bool {
    let out = ns.sh(&format!("ip -o link show dev {ifname}")).unwrap_or_default();
    let flags = out.split('<').nth(1).and_then(|s| s.split('>').next()).unwrap_or("");
    flags.split(',').any(|f| f == "UP")
}

/// Item 6: a file written in place in two chunks is applied once complete, never as its prefix.
#[test]
fn a_half_written_file_is_not_applied() {
    let spec = ClusterSpec::two_nodes().endpoint("web.3", "app-net", "node-a", "10.0.9.5");
    let mut c = Cluster::up(spec).unwrap();
    let full = c.render_state();
    // The prefix is valid on its own: it just lacks web.3, whose veth the agent would remove.
    let cut = full.rfind("[[endpoints]]").unwrap();
    let (prefix, rest) = full.split_at(cut);
    let last = format!("{full}# edited\n");
    let eth0 = c.container("web.3").ifindex("eth0").unwrap();

    let mut f = std::fs::File::create(&c.state_file).unwrap();
    f.write_all(prefix.as_bytes()).unwrap();
    f.flush().unwrap();
    // Longer than the agent's 2 s poll: the writer is slow, not gone.
    std::thread::sleep(Duration::from_millis(2600));
    assert_ne!(c.applied_hash("node-a"), Some(state_hash(prefix)), "the prefix of a half-written file was applied");
    assert_eq!(c.container("web.3").ifindex("eth0").ok(), Some(eth0), "web.3 lost its interface to a partial write");
    f.write_all(rest.as_bytes()).unwrap();
    f.write_all(b"# edited\n").unwrap();
    drop(f);
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert_eq!(c.applied_hash("node-a"), Some(state_hash(&last)));
    assert_eq!(c.container("web.3").ifindex("eth0").ok(), Some(eth0));

    // The other way writers should use: a finished file renamed into place.
    c.write_state(&without(&last, "web.3")).unwrap();
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert!(c.container("web.3").ifindex("eth0").is_err(), "a complete state was not applied");
}

/// Item 7: an endpoint that cannot be plumbed fails alone; every other change is applied.
#[test]
fn one_bad_local_endpoint_does_not_block_other_changes() {
    let spec = ClusterSpec::nodes(3)
        .network("app-net", 4097, "10.0.9.0/24")
        .endpoint("web.1", "app-net", "node-a", "10.0.9.3")
        .endpoint("web.2", "app-net", "node-b", "10.0.9.4")
        .endpoint("web.3", "app-net", "node-b", "10.0.9.5");
    let mut c = Cluster::up(spec).unwrap();
    assert!(c.ping("web.1", "web.3"));
    // A sandbox that already has an eth0 the agent did not create: plumbing bad.1 must fail.
    let bad = Netns::new("bad").unwrap();
    bad.sh("ip link add eth0 type veth peer name eth0p").unwrap();
    let web4 = Netns::new("web4").unwrap();
    let text = without(&c.render_state(), "web.3")
        + &endpoint_block("bad.1", "node-a", "10.0.9.20", &bad.path())
        + &endpoint_block("web.4", "node-c", "10.0.9.6", &web4.path());
    let before = counters(&c, "node-a").drop(DropReason::ArpUnknownTarget);
    c.write_state(&text).unwrap();
    c.wait_applied(Duration::from_secs(10)).unwrap();

    let r = record(&c, "node-a");
    assert!(r.failed.get("bad.1").is_some_and(|why| why.contains("eth0")), "{:?}", r.failed);
    assert!(
        wait_for(Duration::from_secs(5), || c.container("web.1").ok("ping -c1 -W1 10.0.9.6")),
        "new remote endpoint"
    );
    // The removed endpoint is gone from node-a's maps: ARP for it is refused, not answered.
    c.container("web.1").sh("ip neigh flush all").unwrap();
    assert!(!c.ping("web.1", "web.3"));
    assert!(counters(&c, "node-a").drop(DropReason::ArpUnknownTarget) > before, "removed endpoint still answered");
    let stats = c.nodes["node-a"]
        .sh(&format!("{} stats --node node-a --run-dir {}", overlay_bin().display(), c.run_dir.path.display()))
        .unwrap();
    assert!(stats.contains("not plumbed") && stats.contains("bad.1"), "{stats}");
    assert_eq!(c.agent_log("node-a").matches("endpoint not plumbed (will retry)").count(), 1, "logged once");
}

/// Item 8: a sandbox deleted and created again is plumbed again without any change to the file.
#[test]
fn a_recreated_sandbox_is_plumbed_again() {
    let c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    let name = c.container("web.1").name.clone();
    let ip = |args: &[&str]| Command::new("ip").args(args).status().unwrap().success();
    assert!(ip(&["netns", "del", &name]) && ip(&["netns", "add", &name]));
    assert!(
        wait_for(Duration::from_secs(10), || Netns::ok_in(&name, "ping -c1 -W1 10.0.9.4")),
        "the recreated sandbox was not plumbed again:\n{}",
        c.agent_log("node-a")
    );
    assert!(c.agent_log("node-a").contains("repaired"), "{}", c.agent_log("node-a"));
}

/// Recreate node-a's underlay interface (same name and address, new ifindex).
fn recreate_underlay(c: &Cluster) {
    let node = &c.nodes["node-a"];
    node.sh("ip link del ul0").unwrap();
    c.underlay
        .sh(&format!(
            "ip link add n0 type veth peer name ul0 && ip link set ul0 netns {} && ip link set n0 master br0 && ip link set n0 up",
            node.name
        ))
        .unwrap();
    node.sh("ip addr add 192.168.50.11/24 dev ul0 && ip link set ul0 up").unwrap();
}

/// Item 9: an underlay recreated while the agent was stopped, or while it runs, gets
/// decapsulation again; the old pinned link (severed) is replaced, not fatal.
#[test]
fn a_recreated_underlay_is_followed() {
    let mut c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    c.kill_agent("node-a");
    recreate_underlay(&c);
    c.start_agent("node-a").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || c.ping("web.2", "web.1")),
        "restart after the underlay was recreated:\n{}",
        c.agent_log("node-a")
    );
    recreate_underlay(&c);
    assert!(
        wait_for(Duration::from_secs(10), || c.ping("web.2", "web.1")),
        "underlay recreated under a running agent:\n{}",
        c.agent_log("node-a")
    );
}

/// Item 9: a node address this host does not hold is refused, and the last good state stays.
#[test]
fn a_node_address_this_host_does_not_hold_is_refused() {
    let c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    let before = c.applied_hash("node-a");
    c.write_state(&c.render_state().replace("192.168.50.11", "192.168.50.99")).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || c.agent_log("node-a").contains("holds the node address 192.168.50.99")),
        "{}",
        c.agent_log("node-a")
    );
    assert_eq!(c.applied_hash("node-a"), before, "a state with a foreign node address was applied");
}

/// Item 10: a second agent for the same node exits at once, naming the first one.
#[test]
fn a_second_agent_for_a_node_exits() {
    let c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    let pid = c.agents["node-a"].child.id();
    let log = c.logs.join("second.log");
    let cmd = format!(
        "timeout 20 {} run --state {} --node node-a --run-dir {} >{} 2>&1",
        overlay_bin().display(),
        c.state_file.display(),
        c.run_dir.path.display(),
        log.display()
    );
    let ok = c.nodes["node-a"].ok(&cmd);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!ok, "a second agent ran: {out}");
    assert!(out.contains("already running") && out.contains(&format!("pid {pid}")), "{out}");
    assert!(c.ping("web.1", "web.2"), "the first agent's datapath must be untouched");
}

/// Item 11: a sandbox path that is a FIFO is refused by `check --node`, and never blocks the agent.
#[test]
fn a_fifo_in_place_of_a_sandbox_blocks_nothing() {
    let mut c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    let fifo = c.run_dir.path.join("not-a-netns");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let text = c.render_state() + &endpoint_block("fifo.1", "node-a", "10.0.9.30", &fifo);
    c.write_state(&text).unwrap();
    let check =
        format!("timeout 10 {} check --state {} --node node-a 2>&1", overlay_bin().display(), c.state_file.display());
    let out = c.nodes["node-a"].sh(&format!("{check}; echo exit=$?")).unwrap();
    assert!(out.contains("not a network namespace") && out.contains("exit=1"), "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || c.agent_log("node-a").contains("not a network namespace")),
        "{}",
        c.agent_log("node-a")
    );
    assert!(c.ping("web.1", "web.2"), "the other endpoints must keep working");
    // The agent still answers signals.
    let agent = c.agents.get_mut("node-a").unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.child.id() as i32), nix::sys::signal::SIGTERM);
    assert!(wait_for(Duration::from_secs(10), || matches!(agent.child.try_wait(), Ok(Some(_)))), "agent hung");
}

/// Item 5: a container's veth never carries traffic unfiltered. With the program attachment
/// failing (its pin cannot be written: the bpffs is read-only), the host end stays down.
#[test]
fn a_veth_stays_down_until_its_program_is_attached() {
    let mut c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    let bpffs = c.run_dir.path.join("bpffs");
    let remount = |opt: &str| {
        let flags = nix::mount::MsFlags::MS_REMOUNT
            | if opt == "ro" { nix::mount::MsFlags::MS_RDONLY } else { nix::mount::MsFlags::empty() };
        nix::mount::mount(None::<&str>, &bpffs, Some("bpf"), flags, None::<&str>).unwrap();
    };
    let web9 = Netns::new("web9").unwrap();
    let text = c.render_state() + &endpoint_block("web.9", "node-a", "10.0.9.9", &web9.path());
    remount("ro");
    c.write_state(&text).unwrap();
    let host = host_veth_name("web.9");
    let node = c.nodes["node-a"].name.clone();
    let seen = wait_for(Duration::from_secs(10), || c.agent_log("node-a").contains("will retry"));
    let exists = Netns::ok_in(&node, &format!("ip link show dev {host}"));
    let up = link_is_up(&c.nodes["node-a"], &host);
    remount("rw");
    assert!(seen, "the attachment did not fail as arranged:\n{}", c.agent_log("node-a"));
    assert!(exists && !up, "veth {host} is up without its program (exists {exists}, up {up})");
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert!(wait_for(Duration::from_secs(10), || web9.ok("ping -c1 -W1 10.0.9.3")), "retry after the failure");
    assert!(link_is_up(&c.nodes["node-a"], &host));
}
