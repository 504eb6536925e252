//! A real etcd (Debian's etcd-server) for the tests, the demo and the bench: one member in its
//! own namespace, on the underlay (or on its own bridge), data under the run dir. Nothing
//! listens in the root namespace.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Result};

use crate::{
    cluster::Proc,
    netns::{in_netns, run, spawn_in},
    wait_for,
};

pub const CLIENT_PORT: u16 = 2379;

pub struct Etcd {
    /// The namespace etcd runs in (the caller's).
    pub ns: String,
    pub address: String,
    pub data: PathBuf,
    pub log: PathBuf,
    /// With `start_tls`: etcd serves TLS only and requires client certificates.
    pub tls: Option<TlsFiles>,
    proc: Option<Proc>,
}

/// A CA, etcd's server certificate (for its address and 127.0.0.1), a client certificate the
/// CA signed, and a second CA that signed nothing etcd trusts (PEM files, made with openssl).
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TlsFiles {
    fn make(dir: &Path, address: &str) -> Result<Self> {
        let d = dir.display();
        let sh = |cmd: &str| run(std::process::Command::new("sh").args(["-c", cmd]));
        for ca in ["ca", "other-ca"] {
            sh(&format!(
                "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={ca} -keyout {d}/{ca}.key -out {d}/{ca}.pem 2>&1"
            ))?;
        }
        for (name, ext) in [
            ("server", format!("subjectAltName=IP:{address},IP:127.0.0.1\nextendedKeyUsage=serverAuth")),
            ("client", "extendedKeyUsage=clientAuth".to_string()),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext)?;
            sh(&format!(
                "openssl req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {d}/{name}.key -out {d}/{name}.csr 2>&1 && \
                 openssl x509 -req -in {d}/{name}.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 2 \
                 -extfile {d}/{name}.ext -out {d}/{name}.pem 2>&1"
            ))?;
        }
        Ok(Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.pem"),
        })
    }
}

impl Etcd {
    /// Starts etcd in namespace `ns`, serving clients on `address` and on 127.0.0.1 (the
    /// namespace's own commands: they still work while `block_clients` drops the others).
    /// The transaction limits are raised so that `overlay state push` of a large state fits
    /// one transaction (see README).
    pub fn start(ns: &str, address: &str, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut e = Self {
            ns: ns.to_string(),
            address: address.to_string(),
            data: dir.join("data"),
            log: dir.join("etcd.log"),
            tls: None,
            proc: None,
        };
        e.resume()?;
        Ok(e)
    }

    /// Like `start`, serving TLS only and requiring a client certificate signed by its CA.
    pub fn start_tls(ns: &str, address: &str, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut e = Self {
            ns: ns.to_string(),
            address: address.to_string(),
            data: dir.join("data"),
            log: dir.join("etcd.log"),
            tls: Some(TlsFiles::make(dir, address)?),
            proc: None,
        };
        e.resume()?;
        Ok(e)
    }

    /// The store URL for `prefix`, reachable from every namespace on the same network.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}:{CLIENT_PORT}{prefix}", self.address)
    }

    /// The same store through 127.0.0.1, for commands run in etcd's namespace.
    pub fn local_url(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{CLIENT_PORT}{prefix}")
    }

    /// Kills etcd (its data stays).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts etcd again on its data; returns once it answers.
    pub fn resume(&mut self) -> Result<()> {
        let a = &self.address;
        let (scheme, tls) = self.tls_flags(|t| {
            format!(
                " --cert-file {} --key-file {} --trusted-ca-file {} --client-cert-auth",
                t.server_cert.display(),
                t.server_key.display(),
                t.ca.display()
            )
        });
        let cmd = format!(
            "etcd --name t --data-dir {} --listen-client-urls {scheme}://{a}:{CLIENT_PORT},{scheme}://127.0.0.1:{CLIENT_PORT} \
             --advertise-client-urls {scheme}://{a}:{CLIENT_PORT} --listen-peer-urls http://127.0.0.1:2380 \
             --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster t=http://127.0.0.1:2380 \
             --max-txn-ops 1000000 --max-request-bytes 67108864 --logger zap --log-level warn{tls}",
            self.data.display()
        );
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        self.proc = Some(Proc(spawn_in(&self.ns, &cmd, f)?));
        let ready = wait_for(Duration::from_secs(20), || self.ctl("endpoint health").is_ok());
        if !ready {
            bail!("etcd did not come up; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        Ok(())
    }

    /// The URL scheme and, with TLS, the flags `with` makes of the files.
    fn tls_flags(&self, with: impl Fn(&TlsFiles) -> String) -> (&'static str, String) {
        match &self.tls {
            Some(t) => ("https", with(t)),
            None => ("http", String::new()),
        }
    }

    /// `etcdctl ARGS` against the local member; its output.
    pub fn ctl(&self, args: &str) -> Result<String> {
        let (scheme, tls) = self.tls_flags(|t| {
            format!("--cacert {} --cert {} --key {} ", t.ca.display(), t.client_cert.display(), t.client_key.display())
        });
        run(&mut in_netns(
            &self.ns,
            &format!(
                "ETCDCTL_API=3 etcdctl --endpoints {scheme}://127.0.0.1:{CLIENT_PORT} --command-timeout 5s {tls}{args}"
            ),
        ))
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        let out = self.ctl("endpoint status -w json")?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["Status"]["header"]["revision"].as_i64().ok_or_else(|| anyhow::anyhow!("no revision in {out}"))
    }

    /// Compacts the history up to the current revision (watchers behind it must resync).
    pub fn compact(&self) -> Result<i64> {
        let rev = self.revision()?;
        self.ctl(&format!("compact {rev} --physical"))?;
        Ok(rev)
    }

    /// Drops (or stops dropping) every client connection not from etcd's own namespace: etcd
    /// unreachable for the agents while it keeps running for the test's commands.
    pub fn block_clients(&self, block: bool) -> Result<()> {
        let r = if block {
            run(&mut in_netns(&self.ns, &format!(
                "nft add table inet etcdblock && nft add chain inet etcdblock in '{{ type filter hook input priority 0; }}' \
                 && nft add rule inet etcdblock in iifname != lo tcp dport {CLIENT_PORT} drop \
                 && nft add chain inet etcdblock out '{{ type filter hook output priority 0; }}' \
                 && nft add rule inet etcdblock out oifname != lo tcp sport {CLIENT_PORT} drop"
            )))
        } else {
            run(&mut in_netns(&self.ns, "nft delete table inet etcdblock"))
        };
        r.map(|_| ())
    }
}
