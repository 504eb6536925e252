//! The CLI as a user meets it: `overlay check` on good and bad files, exit codes and messages.

use std::process::Command;

use overlay_tests::overlay_bin;

const GOOD: &str = r#"
[[nodes]]
name = "node-a"
address = "192.168.50.11"

[[networks]]
name = "app-net"
vni = 4097
subnet = "10.0.9.0/24"

[[endpoints]]
name = "web.1"
network = "app-net"
node = "node-a"
ip = "10.0.9.3"
netns = "/var/run/netns/does-not-exist-here"
"#;

static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn check(text: &str, extra: &[&str]) -> (bool, String) {
    // Tests run in parallel: one directory each.
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("overlay-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("state.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(overlay_bin()).arg("check").arg("--state").arg(&f).args(extra).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_accepts_a_good_file() {
    let (ok, out) = check(GOOD, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 nodes, 1 networks, 1 endpoints, vxlan port 4789)"), "{out}");
}

#[test]
fn check_names_entry_and_field_and_fails() {
    // Two independent problems in one file: both are reported.
    let (ok, out) = check(&GOOD.replace("10.0.9.3", "10.0.8.3").replace("node = \"node-a\"", "node = \"node-q\""), &[]);
    assert!(!ok);
    assert!(out.contains("endpoints \"web.1\": field `ip`: 10.0.8.3 is outside subnet 10.0.9.0/24"), "{out}");
    assert!(out.contains("endpoints \"web.1\": field `node`: unknown node \"node-q\""), "{out}");
    // An invalid network is named, and its endpoints say so rather than "unknown".
    let (ok, out) = check(&GOOD.replace("vni = 4097", "vni = 0"), &[]);
    assert!(!ok);
    assert!(out.contains("networks \"app-net\": field `vni`: 0 is out of range"), "{out}");
    assert!(out.contains("(that network is invalid)"), "{out}");
}

#[test]
fn check_rejects_unknown_keys() {
    let (ok, out) = check(&GOOD.replace("vni = 4097", "vni = 4097\nmtuu = 1400"), &[]);
    assert!(!ok);
    assert!(out.contains("mtuu"), "{out}");
}

#[test]
fn check_for_a_node_looks_for_its_sandboxes() {
    let (ok, out) = check(GOOD, &["--node", "node-a"]);
    assert!(!ok);
    assert!(out.contains("endpoints \"web.1\": field `netns`"), "{out}");
    let (ok, out) = check(GOOD, &["--node", "node-z"]);
    assert!(!ok);
    assert!(out.contains("not in the state file"), "{out}");
}

#[test]
fn check_reports_every_problem_of_an_entry_at_once() {
    let (ok, out) = check(&GOOD.replace("vni = 4097", "vni = 0").replace("10.0.9.0/24", "10.0.0.0/33"), &[]);
    assert!(!ok);
    assert!(out.contains("networks \"app-net\": field `vni`"), "{out}");
    assert!(out.contains("networks \"app-net\": field `subnet`"), "{out}");
}

#[test]
fn check_refuses_an_empty_file_as_run_does() {
    let (ok, out) = check("", &[]);
    assert!(!ok);
    assert!(out.contains("no nodes"), "{out}");
}

#[test]
fn node_names_on_the_command_line_are_checked_like_the_file() {
    // `overlay down --node ""` once removed every node's pins. Run inside a namespace of our own:
    // were the check missing, `down` would act on that namespace only.
    let ns = overlay_tests::Netns::new("cli").unwrap();
    for bad in ["''", "..", "a/b"] {
        let cmd =
            format!("{} down --node {bad} --run-dir /nonexistent-run-dir 2>&1; echo exit=$?", overlay_bin().display());
        let out = ns.sh(&cmd).unwrap();
        assert!(out.contains("--node") && out.contains("exit=2"), "{bad}: {out}");
    }
}
