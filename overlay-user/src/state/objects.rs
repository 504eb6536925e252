//! The state as separate objects, one per key of a store (`PREFIX/nodes/NAME`, ...). Each
//! object's value is its table in the state file's own format (`[[endpoints]]` and its fields),
//! so `overlay state get` concatenates values into a file `overlay check` accepts, and a stored
//! object reads exactly like the file's table. A change re-parses only the objects it touches;
//! validation then runs over all of them, with the same rules and messages as the file.

use std::collections::BTreeMap;

use super::{
    error::Problem,
    raw::{RawRefs, RawState},
    validate::validate,
    ClusterState, StateError,
};

/// The kinds of object, in the order a state file lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Gwbridge,
    Node,
    Network,
    Endpoint,
    Service,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Cluster, Kind::Gwbridge, Kind::Node, Kind::Network, Kind::Endpoint, Kind::Service];

    /// The key's first segment: the state file's table name.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Gwbridge => "gwbridge",
            Kind::Node => "nodes",
            Kind::Network => "networks",
            Kind::Endpoint => "endpoints",
            Kind::Service => "services",
        }
    }

    /// `[cluster]` and `[gwbridge]` are single tables: their key has no name.
    pub fn singleton(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Gwbridge)
    }
}

/// Where an object lives under the store's prefix: `cluster`, `gwbridge`, `nodes/NAME`, ...
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    /// Empty for the singletons.
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, name: &str) -> Self {
        Self { kind, name: if kind.singleton() { String::new() } else { name.to_string() } }
    }

    /// The key below the prefix.
    pub fn path(&self) -> String {
        if self.kind.singleton() {
            self.kind.dir().to_string()
        } else {
            format!("{}/{}", self.kind.dir(), self.name)
        }
    }

    /// The inverse of `path`; `None` for anything that is not an object key (a name may hold
    /// `/`: everything after the kind's segment is the name).
    pub fn parse(path: &str) -> Option<Self> {
        for kind in Kind::ALL {
            if kind.singleton() {
                if path == kind.dir() {
                    return Some(Self::new(kind, ""));
                }
            } else if let Some(name) = path.strip_prefix(kind.dir()).and_then(|r| r.strip_prefix('/')) {
                if !name.is_empty() {
                    return Some(Self::new(kind, name));
                }
            }
        }
        None
    }
}

/// One object: its stored text and that text parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    text: String,
    raw: RawState,
}

impl Object {
    /// Parses a stored value. It must hold exactly one table of the key's kind, named as the
    /// key (a value copied under another key would otherwise shadow or duplicate an object).
    pub fn parse(key: &ObjectKey, text: &str) -> Result<Self, Problem> {
        let problem = |field: &str, reason: String| Problem { entry: key.path(), field: field.into(), reason };
        let raw: RawState = toml::from_str(text).map_err(|e| problem("value", e.message().to_string()))?;
        let (count, name) = match key.kind {
            Kind::Cluster => (raw.cluster.is_some() as usize, None),
            Kind::Gwbridge => (raw.gwbridge.is_some() as usize, None),
            Kind::Node => (raw.nodes.len(), raw.nodes.first().map(|n| n.name.as_str())),
            Kind::Network => (raw.networks.len(), raw.networks.first().map(|n| n.name.as_str())),
            Kind::Endpoint => (raw.endpoints.len(), raw.endpoints.first().map(|n| n.name.as_str())),
            Kind::Service => (raw.services.len(), raw.services.first().map(|n| n.name.as_str())),
        };
        let total = raw.cluster.is_some() as usize
            + raw.gwbridge.is_some() as usize
            + raw.nodes.len()
            + raw.networks.len()
            + raw.endpoints.len()
            + raw.services.len();
        if count != 1 || total != 1 {
            let table =
                if key.kind.singleton() { format!("[{}]", key.kind.dir()) } else { format!("[[{}]]", key.kind.dir()) };
            return Err(problem("value", format!("must hold exactly one {table} table (it holds {total} tables)")));
        }
        if let Some(name) = name {
            if name != key.name {
                return Err(problem("name", format!("is \"{name}\" but the key names \"{}\"", key.name)));
            }
        }
        Ok(Self { text: text.to_string(), raw })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn from_raw(raw: RawState) -> Self {
        // Serializing our own derived structs cannot fail (no maps with non-string keys).
        let text = toml::to_string(&raw).unwrap_or_default();
        Self { text, raw }
    }
}

/// A change to the stored objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(ObjectKey, String),
    Delete(ObjectKey),
}

/// A whole state as objects, ordered like a state file (by kind, then name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    map: BTreeMap<ObjectKey, Object>,
}

impl Objects {
    /// Splits a state file into objects. The file is validated whole first, so a state that
    /// reaches the store is one `overlay check` accepts.
    pub fn from_file_text(text: &str, path: &std::path::Path) -> Result<(Self, ClusterState), StateError> {
        let state = super::parse(text, path)?;
        Ok((Self::from_fragment(text, path)?, state))
    }

    /// Splits tables into objects without validating them together: `overlay state put` adds
    /// them to the stored state, which is validated whole.
    pub fn from_fragment(text: &str, path: &std::path::Path) -> Result<Self, StateError> {
        let raw: RawState =
            toml::from_str(text).map_err(|e| StateError::Syntax { path: path.into(), message: e.to_string() })?;
        let mut map = BTreeMap::new();
        let mut dup = Vec::new();
        let mut add = |key: ObjectKey, r: RawState| {
            if map.insert(key.clone(), Object::from_raw(r)).is_some() {
                dup.push(Problem { entry: key.path(), field: "name".into(), reason: "given twice".into() });
            }
        };
        if let Some(c) = raw.cluster {
            add(ObjectKey::new(Kind::Cluster, ""), RawState { cluster: Some(c), ..Default::default() });
        }
        if let Some(g) = raw.gwbridge {
            add(ObjectKey::new(Kind::Gwbridge, ""), RawState { gwbridge: Some(g), ..Default::default() });
        }
        for n in raw.nodes {
            add(ObjectKey::new(Kind::Node, &n.name), RawState { nodes: vec![n], ..Default::default() });
        }
        for n in raw.networks {
            add(ObjectKey::new(Kind::Network, &n.name), RawState { networks: vec![n], ..Default::default() });
        }
        for e in raw.endpoints {
            add(ObjectKey::new(Kind::Endpoint, &e.name), RawState { endpoints: vec![e], ..Default::default() });
        }
        for s in raw.services {
            add(ObjectKey::new(Kind::Service, &s.name), RawState { services: vec![s], ..Default::default() });
        }
        let empty: Vec<Problem> = map
            .keys()
            .filter(|k| !k.kind.singleton() && k.name.is_empty())
            .map(|k| Problem { entry: k.kind.dir().into(), field: "name".into(), reason: "must not be empty".into() })
            .collect();
        dup.extend(empty);
        if !dup.is_empty() {
            return Err(StateError::Invalid { path: path.into(), problems: dup });
        }
        Ok(Self { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.map.get(key)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Object)> {
        self.map.iter()
    }
    /// Returns whether anything changed.
    pub fn insert(&mut self, key: ObjectKey, obj: Object) -> bool {
        self.map.insert(key, obj.clone()).as_ref() != Some(&obj)
    }
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        self.map.remove(key).is_some()
    }

    /// Validates all objects together, exactly as a state file holding them would be.
    pub fn validate(&self) -> Result<ClusterState, Vec<Problem>> {
        let mut refs = RawRefs::default();
        for o in self.map.values() {
            refs.add(&o.raw);
        }
        validate(refs)
    }

    /// Validation after `changed` keys changed since `prev` was validated from these objects:
    /// incremental when only endpoints changed (see `validate::validate_endpoint_change`),
    /// in full otherwise or when anything is wrong (so problems read as for a file).
    pub fn validate_after(&self, prev: &ClusterState, changed: &[ObjectKey]) -> Result<ClusterState, Vec<Problem>> {
        match self.validate_changed_endpoints(prev, changed) {
            Some(s) => Ok(s),
            None => self.validate(),
        }
    }

    /// The incremental path alone: `None` when it does not apply or finds a problem.
    fn validate_changed_endpoints(&self, prev: &ClusterState, changed: &[ObjectKey]) -> Option<ClusterState> {
        if !changed.iter().all(|k| k.kind == Kind::Endpoint) {
            return None;
        }
        let mut refs = RawRefs::default();
        for o in self.map.values() {
            refs.add(&o.raw);
        }
        // A key changed twice is checked once, as it is now.
        let mut keys: Vec<&ObjectKey> = changed.iter().collect();
        keys.sort();
        keys.dedup();
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        let put: Vec<&super::raw::RawEndpoint> =
            keys.iter().filter_map(|k| self.map.get(*k)?.raw.endpoints.first()).collect();
        super::validate::validate_endpoint_change(prev, &names, &refs, &put)
    }

    /// The state file these objects make (values concatenated in file order).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for o in self.map.values() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&o.text);
        }
        out
    }

    /// What turns `self` into `new`: puts for new or changed values, deletes for the rest.
    pub fn diff(&self, new: &Objects) -> Vec<Change> {
        let mut out = Vec::new();
        for (k, o) in &new.map {
            if self.map.get(k).map(|c| &c.raw) != Some(&o.raw) {
                out.push(Change::Put(k.clone(), o.text.clone()));
            }
        }
        for k in self.map.keys().filter(|k| !new.map.contains_key(*k)) {
            out.push(Change::Delete(k.clone()));
        }
        out
    }

    /// Applies changes in place (parsing each put); the first bad value is returned and
    /// nothing is changed.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), Problem> {
        let mut parsed = Vec::with_capacity(changes.len());
        for c in changes {
            match c {
                Change::Put(k, text) => parsed.push((k, Some(Object::parse(k, text)?))),
                Change::Delete(k) => parsed.push((k, None)),
            }
        }
        for (k, o) in parsed {
            match o {
                Some(o) => {
                    self.map.insert(k.clone(), o);
                }
                None => {
                    self.map.remove(k);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FILE: &str = r#"
[cluster]
vxlan_port = 4789

[[nodes]]
name = "a"
address = "10.0.0.1"

[[nodes]]
name = "b"
address = "10.0.0.2"

[[networks]]
name = "blue"
vni = 100
subnet = "10.1.0.0/24"

[[endpoints]]
name = "web/1"
network = "blue"
node = "a"
ip = "10.1.0.2"

[[endpoints]]
name = "db"
network = "blue"
node = "b"
ip = "10.1.0.3"

[[services]]
name = "web"
vips = [{ network = "blue", ip = "10.1.0.100" }]
ports = [{ protocol = "tcp", target = 80 }]
backends = [{ endpoint = "web/1" }]
"#;

    #[test]
    fn key_layout_round_trips() {
        for (path, kind, name) in [
            ("cluster", Kind::Cluster, ""),
            ("gwbridge", Kind::Gwbridge, ""),
            ("nodes/a", Kind::Node, "a"),
            ("networks/blue", Kind::Network, "blue"),
            ("endpoints/web/1", Kind::Endpoint, "web/1"),
            ("services/web", Kind::Service, "web"),
        ] {
            let k = ObjectKey::parse(path).unwrap();
            assert_eq!((k.kind, k.name.as_str()), (kind, name), "{path}");
            assert_eq!(k.path(), path);
        }
        for bad in ["", "nodes", "nodes/", "node/a", "cluster/x", "alive/a", "Nodes/a"] {
            assert!(ObjectKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_file_splits_into_objects_that_validate_and_print_back_the_same_state() {
        let (objs, state) = Objects::from_file_text(FILE, Path::new("f")).unwrap();
        assert_eq!(objs.len(), 7);
        assert_eq!(objs.validate().unwrap(), state);
        let keys: Vec<String> = objs.iter().map(|(k, _)| k.path()).collect();
        assert_eq!(
            keys,
            ["cluster", "nodes/a", "nodes/b", "networks/blue", "endpoints/db", "endpoints/web/1", "services/web"]
        );
        // `state get` output is a state file equal to the original.
        let back = objs.to_toml();
        assert_eq!(crate::state::parse(&back, Path::new("back")).unwrap(), state);
        // Each value parses back as its own object.
        for (k, o) in objs.iter() {
            assert_eq!(&Object::parse(k, o.text()).unwrap(), o);
        }
    }

    #[test]
    fn a_value_must_be_one_table_of_its_kind_named_as_its_key() {
        let k = ObjectKey::new(Kind::Node, "a");
        assert!(Object::parse(&k, "[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1\"\n").is_ok());
        let e = Object::parse(&k, "[[nodes]]\nname = \"b\"\naddress = \"10.0.0.1\"\n").unwrap_err();
        assert_eq!((e.entry.as_str(), e.field.as_str()), ("nodes/a", "name"));
        let e = Object::parse(&k, "[[networks]]\nname = \"a\"\nvni = 1\nsubnet = \"10.0.0.0/24\"\n").unwrap_err();
        assert_eq!(e.field, "value");
        let two = "[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[nodes]]\nname = \"a\"\naddress = \"10.0.0.2\"\n";
        assert!(Object::parse(&k, two).unwrap_err().reason.contains("exactly one"));
        let e = Object::parse(&k, "[[nodes]]\nname = \"a\"\nadress = \"10.0.0.1\"\n").unwrap_err();
        assert!(e.reason.contains("adress"), "{e}");
        assert!(Object::parse(&ObjectKey::new(Kind::Cluster, ""), "[cluster]\nvxlan_port = 4789\n").is_ok());
    }

    #[test]
    fn diff_then_apply_reaches_the_new_state_and_validates_like_the_file() {
        let (old, _) = Objects::from_file_text(FILE, Path::new("f")).unwrap();
        let edited = FILE.replace("ip = \"10.1.0.3\"", "ip = \"10.1.0.9\"").replace(
            "[[nodes]]\nname = \"b\"\naddress = \"10.0.0.2\"\n",
            "[[nodes]]\nname = \"b\"\naddress = \"10.0.0.2\"\n\n[[nodes]]\nname = \"c\"\naddress = \"10.0.0.3\"\n",
        );
        let edited = edited.replace("[cluster]\nvxlan_port = 4789\n", "");
        let (new, state) = Objects::from_file_text(&edited, Path::new("f")).unwrap();
        let changes = old.diff(&new);
        assert_eq!(changes.len(), 3, "{changes:?}"); // endpoint changed, node added, cluster removed
        assert!(changes.contains(&Change::Delete(ObjectKey::new(Kind::Cluster, ""))));
        let mut applied = old.clone();
        applied.apply(&changes).unwrap();
        assert_eq!(applied, new);
        assert_eq!(applied.validate().unwrap(), state);
        assert!(new.diff(&applied).is_empty());

        // A change that breaks a reference is refused by validation with the file's message.
        let mut broken = new.clone();
        broken.apply(&[Change::Delete(ObjectKey::new(Kind::Network, "blue"))]).unwrap();
        let problems = broken.validate().unwrap_err();
        let file_problems = crate::state::parse(&broken.to_toml(), Path::new("f")).unwrap_err();
        assert_eq!(problems, file_problems.problems());
        // A bad value in a batch changes nothing.
        let mut same = new.clone();
        let bad = [
            Change::Delete(ObjectKey::new(Kind::Node, "c")),
            Change::Put(ObjectKey::new(Kind::Node, "d"), "[[nodes]]\nname = \"x\"\n".into()),
        ];
        assert!(same.apply(&bad).is_err());
        assert_eq!(same, new);
    }
}

#[cfg(test)]
mod incremental_tests {
    use std::path::Path;

    use super::*;

    /// xorshift: reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn base(gwbridge: bool) -> String {
        let mut s = String::new();
        if gwbridge {
            s += "[gwbridge]\n\n";
        }
        for n in 0..4 {
            s += &format!("[[nodes]]\nname = \"n{n}\"\naddress = \"192.168.1.{}\"\n\n", n + 1);
        }
        s += "[[networks]]\nname = \"a\"\nvni = 10\nsubnet = \"10.1.0.0/24\"\ngateway = \"10.1.0.1\"\n\n";
        s += "[[networks]]\nname = \"b\"\nvni = 11\nsubnet = \"10.2.0.0/24\"\ningress = true\n\n";
        for i in 0..40 {
            let net = if i % 2 == 0 { "a" } else { "b" };
            let sub = if i % 2 == 0 { 1 } else { 2 };
            s += &format!(
                "[[endpoints]]\nname = \"e{i}\"\nnetwork = \"{net}\"\nnode = \"n{}\"\nip = \"10.{sub}.0.{}\"\nnetns = \"/run/netns/s{}\"\n\n",
                i % 4,
                10 + i,
                i
            );
        }
        s += "[[services]]\nname = \"web\"\nvips = [{ network = \"a\", ip = \"10.1.0.200\" }]\nports = [{ protocol = \"tcp\", target = 80 }]\nbackends = [{ endpoint = \"e0\" }, { endpoint = \"e2\" }]\n\n";
        s += "[[services]]\nname = \"pub\"\nvips = [{ network = \"b\", ip = \"10.2.0.200\" }]\nports = [{ protocol = \"tcp\", target = 80, published = 8080 }]\nbackends = [{ endpoint = \"e1\" }]\n";
        s
    }

    /// A random endpoint change: new or replaced (sometimes clashing or invalid), or deleted.
    fn change(r: &mut Rng) -> Change {
        let name = format!("e{}", r.next(48));
        let key = ObjectKey::new(Kind::Endpoint, &name);
        if r.next(4) == 0 {
            return Change::Delete(key);
        }
        let (net, sub) = if r.next(2) == 0 { ("a", 1) } else { ("b", 2) };
        let ip = match r.next(40) {
            0 => "10.1.0.1".to_string(),    // a gateway
            1 => "10.9.0.5".to_string(),    // outside
            2 => "10.1.0.200".to_string(),  // a VIP
            3 => "192.168.1.2".to_string(), // a node's address
            _ => format!("10.{sub}.0.{}", 10 + r.next(240)),
        };
        let node = if r.next(30) == 0 { "nx".to_string() } else { format!("n{}", r.next(4)) };
        let net = if r.next(40) == 0 { "zz" } else { net };
        let netns = format!("/run/netns/s{}", r.next(400));
        let ifname = if r.next(20) == 0 { "eth1" } else { "eth0" };
        // An explicit MAC now and then, so a clashing address is not caught by its MAC alone.
        let mac =
            if r.next(3) == 0 { format!("mac = \"02:00:00:00:01:{:02x}\"\n", r.next(200)) } else { String::new() };
        let text = format!(
            "[[endpoints]]\nname = \"{name}\"\nnetwork = \"{net}\"\nnode = \"{node}\"\nip = \"{ip}\"\nnetns = \"{netns}\"\nifname = \"{ifname}\"\n{mac}"
        );
        Change::Put(key, text)
    }

    #[test]
    fn incremental_validation_equals_full_validation() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut fast_ok, mut fast_err) = (0, 0);
        for gw in [false, true] {
            let (mut objs, state) = Objects::from_file_text(&base(gw), Path::new("f")).unwrap();
            let mut valid = state;
            let mut valid_objs = objs.clone();
            let mut changed: Vec<ObjectKey> = Vec::new();
            for _ in 0..400 {
                let batch: Vec<Change> = (0..1 + r.next(3)).map(|_| change(&mut r)).collect();
                objs.apply(&batch).unwrap();
                changed.extend(batch.iter().map(|c| match c {
                    Change::Put(k, _) | Change::Delete(k) => k.clone(),
                }));
                let full = objs.validate();
                let fast = objs.validate_changed_endpoints(&valid, &changed);
                // The incremental path is taken exactly when the state is valid, and agrees.
                assert_eq!(fast.is_some(), full.is_ok(), "after {batch:?}: {full:?}");
                if let Some(f) = &fast {
                    assert_eq!(Ok(f), full.as_ref(), "after {batch:?}");
                }
                let inc = objs.validate_after(&valid, &changed);
                assert_eq!(inc, full, "after {batch:?}");
                match inc {
                    Ok(s) => {
                        fast_ok += 1;
                        valid = s;
                        valid_objs = objs.clone();
                        changed.clear();
                    }
                    Err(_) => {
                        fast_err += 1;
                        // Half the time the writer fixes it (back to the last valid objects);
                        // else changes pile up on an invalid state, as in a store.
                        if r.next(2) == 0 {
                            objs = valid_objs.clone();
                            changed.clear();
                        }
                    }
                }
            }
        }
        // Both outcomes were exercised many times.
        assert!(fast_ok > 100 && fast_err > 100, "{fast_ok} valid, {fast_err} invalid");
    }
}
