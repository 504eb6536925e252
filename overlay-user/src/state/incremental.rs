//! Re-parsing only what changed between versions of a large state file.

use std::path::Path;

use rustc_hash::FxHashMap;

use super::{
    raw::{RawRefs, RawState},
    validate::validate,
    ClusterState, StateError,
};

/// Parses successive versions of a state file, re-parsing only the top-level tables whose text
/// changed since the previous version. TOML parsing dominates the cost of a large file (tens of
/// milliseconds for 10,000 endpoints); an edit usually touches a few tables.
///
/// The fast path is taken only when its result must equal a full parse: the file is split at
/// lines that are exactly one of the top-level table headers, there are no top-level keys before
/// the first header and no multi-line strings, and `[cluster]` appears at most once. Anything
/// else, including any error, goes through the full parser (whose errors carry line numbers).
#[derive(Default)]
pub struct IncrementalParser {
    cache: FxHashMap<String, RawState>,
}

// A line inside a value (a multi-line array of inline tables) is never exactly one of these:
// a header is not a TOML value. Sub-tables (`[[services.backends]]`) stay in their service's block.
const HEADERS: [&str; 6] = ["[cluster]", "[gwbridge]", "[[nodes]]", "[[networks]]", "[[endpoints]]", "[[services]]"];

fn is_header(line: &str) -> bool {
    if !line.trim_start().starts_with('[') {
        return false;
    }
    let l = line.split('#').next().unwrap_or("").trim();
    HEADERS.contains(&l)
}

impl IncrementalParser {
    pub fn parse(&mut self, text: &str, path: &Path) -> Result<ClusterState, StateError> {
        match self.parse_blocks(text) {
            Some(blocks) => {
                let mut refs = RawRefs::default();
                for (_, r) in &blocks {
                    refs.add(r);
                }
                let result = validate(refs);
                self.cache = blocks.into_iter().collect();
                result.map_err(|problems| StateError::Invalid { path: path.into(), problems })
            }
            None => {
                self.cache.clear();
                super::parse(text, path)
            }
        }
    }

    /// The file's tables in order, each parsed or taken from the cache; `None` when the fast
    /// path cannot vouch for the result.
    fn parse_blocks(&mut self, text: &str) -> Option<Vec<(String, RawState)>> {
        if text.contains("\"\"\"") || text.contains("'''") {
            return None;
        }
        let mut blocks: Vec<&str> = Vec::new();
        let mut start = 0;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if is_header(line) {
                if offset > start {
                    blocks.push(&text[start..offset]);
                }
                start = offset;
            }
            offset += line.len();
        }
        if offset > start {
            blocks.push(&text[start..offset]);
        }
        let mut out = Vec::with_capacity(blocks.len());
        let (mut clusters, mut gwbridges) = (0, 0);
        for (i, b) in blocks.iter().enumerate() {
            if i == 0 && !is_header(b.lines().next().unwrap_or("")) {
                // Only blank lines and comments may precede the first table.
                if b.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
                    return None;
                }
                continue;
            }
            let entry = match self.cache.remove_entry(*b) {
                Some(e) => e,
                None => (b.to_string(), toml::from_str::<RawState>(b).ok()?),
            };
            clusters += entry.1.cluster.is_some() as usize;
            gwbridges += entry.1.gwbridge.is_some() as usize;
            out.push(entry);
        }
        // TOML forbids a second [cluster] or [gwbridge] table: let the full parser say so.
        if clusters > 1 || gwbridges > 1 {
            return None;
        }
        Some(out)
    }
}
