//! End-to-end with the state in a real etcd (in its own namespace on the underlay): agents on
//! three nodes follow one prefix; `overlay state push/put/del/get` and `overlay nodes` are
//! driven as a user would; etcd is cut off, restarted and compacted under running traffic.

use std::time::Duration;

use overlay_tests::{wait_for, Cluster, ClusterSpec};

const SETTLE: Duration = Duration::from_secs(20);

fn three_nodes() -> ClusterSpec {
    ClusterSpec::three_nodes_two_networks()
}

/// Pings every pair of one network across nodes (the overlay forwards).
fn overlay_works(c: &Cluster) -> bool {
    [("web.1", "web.2"), ("web.2", "web.3"), ("web.3", "web.1"), ("db.1", "db.3")].iter().all(|(a, b)| c.ping(a, b))
}

fn nodes_json(c: &Cluster) -> serde_json::Value {
    let (ok, out) = c.store_cli("nodes --json");
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The names of live nodes and the revision each applied.
fn live(c: &Cluster) -> Vec<(String, String)> {
    let v = nodes_json(c);
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["live"].is_null())
        .map(|r| (r["node"].as_str().unwrap().to_string(), r["live"]["applied"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn three_agents_converge_on_a_push_and_a_single_put_reaches_every_node() {
    // web.4 is a container of node-a left out of the first push.
    let spec = three_nodes();
    let mut c = Cluster::up_on_etcd(spec).unwrap();
    assert!(overlay_works(&c));
    let rev = c.expected.clone().unwrap();
    // Every agent is live and says it applied the pushed revision.
    assert!(wait_for(SETTLE, || live(&c).len() == 3 && live(&c).iter().all(|(_, r)| r == &rev)), "{:?}", live(&c));

    // The stored state prints back as a state file `overlay check` accepts, equal to the file.
    let (ok, text) = c.store_cli("state get");
    assert!(ok, "{text}");
    let got = c.run_dir.path.join("got.toml");
    std::fs::write(&got, &text).unwrap();
    let check = std::process::Command::new(overlay_tests::overlay_bin())
        .args(["check", "--state", got.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let pushed = overlay::state::load(&c.state_file).unwrap();
    assert_eq!(overlay::state::load(&got).unwrap(), pushed);

    // One endpoint removed, then put back as a single object: every node's map follows.
    let (ok, out) = c.store_cli("state del endpoints/web.3");
    assert!(ok, "{out}");
    c.expect_written(&out).unwrap();
    c.wait_applied(SETTLE).unwrap();
    assert!(!c.ping("web.1", "web.3"), "web.3 removed from the state still answers");
    let web3 = c.spec.endpoints.iter().find(|e| e.name == "web.3").unwrap().clone();
    let obj = c.run_dir.path.join("web3.toml");
    std::fs::write(
        &obj,
        format!(
            "[[endpoints]]\nname = \"web.3\"\nnetwork = \"app-net\"\nnode = \"node-c\"\nip = \"{}\"\nnetns = \"{}\"\n",
            web3.ip,
            c.container("web.3").path().display()
        ),
    )
    .unwrap();
    let (ok, out) = c.store_cli(&format!("state put {}", obj.display()));
    assert!(ok, "{out}");
    let rev = c.expect_written(&out).unwrap();
    c.wait_applied(SETTLE).unwrap();
    assert!(c.ping("web.1", "web.3") && c.ping("web.2", "web.3"));
    assert!(wait_for(SETTLE, || live(&c).iter().all(|(_, r)| r == &rev)), "{:?}", live(&c));

    // A stopped agent's liveness key goes at once (its lease is revoked); the others stay.
    c.agents.get_mut("node-b").map(|a| unsafe { libc::kill(a.child.id() as i32, libc::SIGTERM) });
    // Well inside the lease's TTL (10 s): the key went with the revoked lease, not by expiry.
    assert!(wait_for(Duration::from_secs(4), || live(&c).len() == 2), "{:?}", live(&c));
    assert!(c.ping("web.1", "web.2"), "the datapath of a stopped agent keeps forwarding");
}

#[test]
fn an_invalid_write_is_refused_whole_and_a_bad_key_never_reaches_the_agents() {
    let mut c = Cluster::up_on_etcd(three_nodes()).unwrap();
    let before = c.store_cli("state get").1;

    // A push with a duplicate address and a put with an unknown network: refused, nothing
    // written, with the entry and the field named.
    let bad = c.run_dir.path.join("bad.toml");
    let text = std::fs::read_to_string(&c.state_file).unwrap().replace("10.0.9.5", "10.0.9.4");
    std::fs::write(&bad, text).unwrap();
    let (ok, out) = c.store_cli(&format!("state push --state {}", bad.display()));
    assert!(!ok && out.contains("field `ip`") && out.contains("nothing written"), "{out}");
    std::fs::write(&bad, "[[endpoints]]\nname = \"x\"\nnetwork = \"nope\"\nnode = \"node-a\"\nip = \"10.9.0.2\"\n")
        .unwrap();
    let (ok, out) = c.store_cli(&format!("state put {}", bad.display()));
    assert!(!ok && out.contains("endpoints \"x\": field `network`"), "{out}");
    let (ok, out) = c.store_cli("state del networks/app-net");
    assert!(!ok && out.contains("unknown network"), "{out}");
    let after = c.store_cli("state get").1;
    assert_eq!(before.lines().skip(1).collect::<Vec<_>>(), after.lines().skip(1).collect::<Vec<_>>());

    // A foreign writer (etcdctl) stores a value with a typo: every agent refuses it, naming
    // the key and the field, and keeps forwarding the last good state.
    let etcd = c.etcd.as_ref().unwrap();
    etcd.ctl("put /overlay/endpoints/web.2 '[[endpoints]]\nname = \"web.2\"\nnetwork = \"app-net\"\nnode = \"node-b\"\nipp = \"10.0.9.4\"\n'")
        .unwrap();
    for n in ["node-a", "node-b", "node-c"] {
        assert!(
            wait_for(SETTLE, || c.agent_log(n).contains("endpoints/web.2") && c.agent_log(n).contains("ipp")),
            "{n}: {}",
            c.agent_log(n)
        );
    }
    assert!(overlay_works(&c), "a bad key changed the datapath");
    let (ok, out) = c.store_cli("state get");
    assert!(!ok && out.contains("endpoints/web.2"), "{out}");
    // A write while the store holds it is refused until it is replaced.
    let (ok, out) = c.store_cli("state del endpoints/web.4");
    assert!(!ok && out.contains("not valid objects"), "{out}");
    // Pushing the file replaces it; the agents converge.
    c.push_state().unwrap();
    c.wait_applied(SETTLE).unwrap();
    assert!(overlay_works(&c));
}

#[test]
fn a_concurrent_writer_makes_a_guarded_write_fail_cleanly() {
    let mut c = Cluster::up_on_etcd(three_nodes()).unwrap();
    let (ok, text) = c.store_cli("state get");
    assert!(ok);
    let read_at = text.lines().next().unwrap().rsplit(' ').next().unwrap().to_string();
    // Another writer comes between the read and the write.
    let (ok, out) = c.store_cli("state del endpoints/web.4");
    assert!(ok, "{out}");
    let rev = c.expect_written(&out).unwrap();
    let (ok, out) = c.store_cli(&format!("state push --state {} --if-revision {read_at}", c.state_file.display()));
    assert!(!ok && out.contains("changed since") && out.contains("nothing written"), "{out}");
    let (ok, out) = c.store_cli(&format!("state del endpoints/web.3 --if-revision {read_at}"));
    assert!(!ok && out.contains("changed since"), "{out}");
    // Nothing of either refused write landed.
    let (_, now) = c.store_cli("state get");
    assert!(now.contains("name = \"web.3\"") && !now.contains("name = \"web.4\""), "{now}");
    c.wait_applied(SETTLE).unwrap();
    assert_eq!(c.applied_hash("node-a").unwrap(), rev);
    // With the revision just read, the write goes through.
    let (ok, out) = c.store_cli(&format!("state push --state {} --if-revision {rev}", c.state_file.display()));
    assert!(ok, "{out}");
}

#[test]
fn etcd_cut_off_restarted_and_compacted_loses_no_forwarding_and_agents_converge_after() {
    let mut c = Cluster::up_on_etcd(three_nodes()).unwrap();
    c.start_servers().unwrap();
    let etcd = c.etcd.as_ref().unwrap();
    etcd.block_clients(true).unwrap();
    // The block works: a node cannot reach etcd (the CLI gives up after its 5 s timeout).
    let probe = format!("{} nodes --store {}", overlay_tests::overlay_bin().display(), c.store_url());
    assert!(!c.nodes["node-a"].ok(&probe), "etcd still reachable from node-a");
    // etcd restarts while cut off, then the state changes and the history is compacted. (The
    // change comes after the restart: a change made before it would still reach the agents
    // when the block goes, retransmitted by the dead process's orphaned sockets, and the agents
    // would never need to resync.)
    c.etcd.as_mut().unwrap().stop();
    assert!(overlay_works(&c), "forwarding stopped with etcd down");
    let etcd = c.etcd.as_mut().unwrap();
    etcd.resume().unwrap();
    let (ok, out) = c.store_cli("state del endpoints/db.3");
    assert!(ok, "{out}");
    let rev = c.expect_written(&out).unwrap();
    c.etcd.as_ref().unwrap().compact().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(overlay_works(&c), "forwarding stopped while the agents were cut off");
    for n in ["node-a", "node-b", "node-c"] {
        assert_ne!(c.applied_hash(n).as_deref(), Some(rev.as_str()), "{n} applied while cut off");
    }
    c.etcd.as_ref().unwrap().block_clients(false).unwrap();
    c.wait_applied(Duration::from_secs(40)).unwrap();
    assert!(!c.ping("db.1", "db.3"), "db.3 was removed while etcd was away");
    assert!(overlay_works_without_db3(&c));
    for n in ["node-a", "node-b", "node-c"] {
        let log = c.agent_log(n);
        assert!(log.contains("unreachable") || log.contains("watch lost"), "{n} never reported the outage:\n{log}");
    }
}

fn overlay_works_without_db3(c: &Cluster) -> bool {
    [("web.1", "web.2"), ("web.2", "web.3"), ("web.3", "web.1"), ("db.1", "db.2")].iter().all(|(a, b)| c.ping(a, b))
}

#[test]
fn an_agent_restarted_while_etcd_is_down_keeps_forwarding_and_catches_up() {
    let mut c = Cluster::up_on_etcd(three_nodes()).unwrap();
    // Let the cache be written (at most a second after a state is seen).
    std::thread::sleep(Duration::from_millis(1500));
    c.etcd.as_mut().unwrap().stop();
    c.kill_agent("node-a");
    c.start_agent("node-a").unwrap();
    assert!(
        wait_for(SETTLE, || c.agent_log("node-a").contains("applying the last state seen")),
        "{}",
        c.agent_log("node-a")
    );
    assert!(overlay_works(&c), "a restarted agent with etcd down broke forwarding");
    // A container recreated meanwhile is repaired from the cached state.
    c.etcd.as_mut().unwrap().resume().unwrap();
    let (ok, out) = c.store_cli("state del endpoints/web.4");
    assert!(ok, "{out}");
    c.expect_written(&out).unwrap();
    c.wait_applied(Duration::from_secs(40)).unwrap();
    assert!(overlay_works(&c));
}

#[test]
fn an_agent_waits_for_a_store_that_does_not_name_its_node_yet() {
    let mut c = Cluster::up_on_etcd(ClusterSpec::two_nodes()).unwrap();
    // A third node's agent starts before its node is in the store: it waits, touching nothing.
    let (ok, out) = c.store_cli("state del nodes/node-b endpoints/web.2");
    assert!(ok, "{out}");
    c.expect_written(&out).unwrap();
    c.kill_agent("node-b");
    c.start_agent("node-b").unwrap();
    assert!(
        wait_for(SETTLE, || c.agent_log("node-b").contains("node node-b is not in the state")),
        "{}",
        c.agent_log("node-b")
    );
    let (ok, out) = c.store_cli(&format!("state push --state {}", c.state_file.display()));
    assert!(ok, "{out}");
    c.expect_written(&out).unwrap();
    c.wait_applied(SETTLE).unwrap();
    assert!(c.ping("web.1", "web.2"));
}

#[test]
fn tls_with_client_certificates() {
    use overlay_tests::{etcd::Etcd, Netns, RunDir};
    let dir = RunDir::new().unwrap();
    let ns = Netns::new("etls").unwrap();
    let etcd = Etcd::start_tls(&ns.name, "127.0.0.1", &dir.path.join("etcd")).unwrap();
    let t = etcd.tls.as_ref().unwrap();
    let bin = overlay_tests::overlay_bin();
    let url = etcd.url("/overlay");
    let state = dir.path.join("s.toml");
    std::fs::write(
        &state,
        "[[nodes]]\nname = \"a\"\naddress = \"192.168.9.1\"\n\n[[networks]]\nname = \"n\"\nvni = 5\nsubnet = \"10.5.0.0/24\"\n\n\
         [[endpoints]]\nname = \"e\"\nnetwork = \"n\"\nnode = \"a\"\nip = \"10.5.0.2\"\n",
    )
    .unwrap();
    let tls = format!(
        "--etcd-cacert {} --etcd-cert {} --etcd-key {}",
        t.ca.display(),
        t.client_cert.display(),
        t.client_key.display()
    );
    let overlay = |args: &str| {
        let out =
            overlay_tests::in_netns(&ns.name, &format!("timeout 20 {} {args} 2>&1", bin.display())).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // With the CA and a client certificate: written and read back.
    let (ok, out) = overlay(&format!("state push --state {} --store {url} {tls}", state.display()));
    assert!(ok && out.starts_with("pushed: 3 put"), "{out}");
    let (ok, out) = overlay(&format!("state get --store {url} {tls}"));
    assert!(ok && out.contains("name = \"e\""), "{out}");
    // Refused: no client certificate, a CA that did not sign etcd's certificate, plain HTTP.
    let (ok, out) = overlay(&format!("state get --store {url} --etcd-cacert {}", t.ca.display()));
    assert!(!ok, "no client certificate, yet: {out}");
    let (ok, out) = overlay(&format!(
        "state get --store {url} --etcd-cacert {} --etcd-cert {} --etcd-key {}",
        t.other_ca.display(),
        t.client_cert.display(),
        t.client_key.display()
    ));
    assert!(!ok, "an untrusted server certificate, yet: {out}");
    let (ok, out) = overlay(&format!("state get --store {url}"));
    assert!(!ok, "plain HTTP to a TLS etcd, yet: {out}");
    // An agent follows the store over TLS (without a datapath: this namespace is no node).
    let log = dir.path.join("agent.log");
    let _agent = overlay_tests::Proc(
        ns.spawn(&format!("{} run --dry-run --store {url} {tls} --node a", bin.display()), &log).unwrap(),
    );
    assert!(
        wait_for(SETTLE, || std::fs::read_to_string(&log).unwrap_or_default().contains("state applied (dry run)")),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
