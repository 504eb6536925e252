//! `cargo xtask bench [--quick]`: writes target/bench/report.{md,json} and overlay.svg.

use std::path::Path;

use anyhow::Result;
use overlay_tests::bench::{control, overlay, progrun, report::Report};

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut r = Report::default();
    r.meta.insert("mode".into(), if quick { "quick (smoke run: short durations, numbers are rough)".into() } else { "full".into() });
    r.meta.insert("kernel".into(), std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into());
    r.meta.insert("cpus".into(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0).to_string());
    r.meta.insert("command".into(), format!("cargo xtask bench{}", if quick { " --quick" } else { "" }));
    let sections: [(&str, fn(&mut Report, bool) -> Result<()>); 3] =
        [("per-packet", progrun::run), ("overlay", overlay::run), ("control plane", control::run)];
    let mut failed = Vec::new();
    for (name, f) in sections {
        eprintln!("bench: {name}...");
        if let Err(e) = f(&mut r, quick) {
            eprintln!("bench: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let md = r.markdown();
    std::fs::write(dir.join("report.md"), &md)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&r)?)?;
    let metrics: Vec<(&str, &str)> = overlay::METRICS.to_vec();
    std::fs::write(dir.join("overlay.svg"), r.svg(overlay::SECTION, &metrics, &overlay::DATAPATHS))?;
    println!("{md}");
    println!("Written: {}/report.md, report.json, overlay.svg", dir.canonicalize()?.display());
    overlay_tests::cleanup_all();
    if !failed.is_empty() {
        anyhow::bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}
