//! A new user's first command on a host without `ping`: the demo must say which tool is missing
//! and which package has it, before it creates anything, instead of printing a matrix of FAILs
//! that reads as "the overlay is broken".

use std::{collections::BTreeSet, path::Path, process::Command};

fn namespaces() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn the_demo_names_a_missing_tool_before_it_starts() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/demo");
    assert!(demo.exists(), "{} is built by `cargo xtask build`", demo.display());
    // A PATH with `ip` but no `ping`.
    let dir = std::env::temp_dir().join(format!("overlay-nopping-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ip =
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].into_iter().find(|p| Path::new(p).exists()).unwrap();
    let _ = std::os::unix::fs::symlink(ip, dir.join("ip"));
    let before = namespaces();
    let out = Command::new(&demo).env("PATH", &dir).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the demo succeeded without ping:\n{stdout}");
    assert!(stderr.contains("`ping` not found") && stderr.contains("iputils-ping"), "{stderr}");
    assert!(!stdout.contains("Connectivity"), "a matrix was printed without the tool to fill it:\n{stdout}");
    assert_eq!(namespaces(), before, "the demo created namespaces before checking its tools");
}
