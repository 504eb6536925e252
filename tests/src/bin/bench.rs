//! `cargo xtask bench [--quick]`: writes target/bench/report.{md,json}, overlay.svg and cpu.svg.

use std::path::Path;

use anyhow::Result;
use overlay_tests::{
    bench::{control, gwbridge, mesh, out_dir, overlay, progrun, report::Report, services, store, Opts},
    prereq,
};

/// A section of the report: fills its rows.
type Section = fn(&mut Report, &Opts) -> Result<()>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // --flame: one flame graph per overlay datapath, from perf samples of a TCP round.
    let opts = Opts { quick, flame: args.iter().any(|a| a == "--flame") };
    // --only NAME runs one section (per-packet, overlay, services, mesh, gwbridge, control-plane,
    // store).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    // --render FILE: redraw the Markdown and the chart of a saved report.json.
    if let Some(f) = args.iter().position(|a| a == "--render").and_then(|i| args.get(i + 1)) {
        let r: Report = serde_json::from_slice(&std::fs::read(f)?)?;
        let out = Path::new(f).with_extension("");
        std::fs::write(out.with_extension("md"), r.markdown())?;
        for (name, svg) in overlay::charts(&r) {
            std::fs::write(out.with_file_name(name), svg)?;
        }
        println!("{}", r.markdown());
        return Ok(());
    }
    prereq::require(&[prereq::IP, prereq::PING, prereq::ETHTOOL, prereq::IPERF3, prereq::NFT], "cargo xtask bench")?;
    if only.as_deref().is_none_or(|o| o == "store") {
        prereq::require(&[prereq::ETCD, prereq::ETCDCTL], "cargo xtask bench")?;
    }
    if opts.flame {
        prereq::require(&[prereq::PERF], "cargo xtask bench --flame")?;
    }
    let mut r = Report::default();
    r.meta.insert(
        "mode".into(),
        if quick { "quick (smoke run: short durations, numbers are rough)".into() } else { "full".into() },
    );
    r.meta.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
    );
    r.meta.insert("cpus".into(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0).to_string());
    r.meta.insert("command".into(), format!("cargo xtask bench{}", if quick { " --quick" } else { "" }));
    let sections: [(&str, Section); 7] = [
        ("per-packet", progrun::run),
        ("overlay", overlay::run),
        ("services", services::run),
        ("mesh", mesh::run),
        ("gwbridge", gwbridge::run),
        ("control-plane", control::run),
        ("store", store::run),
    ];
    let mut failed = Vec::new();
    for (name, f) in sections {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        eprintln!("bench: {name}...");
        if let Err(e) = f(&mut r, &opts) {
            eprintln!("bench: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let md = r.markdown();
    let suffix = only.as_deref().map(|o| format!("-{o}")).unwrap_or_default();
    std::fs::write(dir.join(format!("report{suffix}.md")), &md)?;
    std::fs::write(dir.join(format!("report{suffix}.json")), serde_json::to_string_pretty(&r)?)?;
    let mut written = vec![format!("report{suffix}.md"), format!("report{suffix}.json")];
    for (name, svg) in overlay::charts(&r) {
        std::fs::write(dir.join(name), svg)?;
        written.push(name.into());
    }
    println!("{md}");
    println!("Written in {}: {}", dir.canonicalize()?.display(), written.join(", "));
    overlay_tests::cleanup_all();
    if !failed.is_empty() {
        anyhow::bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}
