//! `--store etcd://HOST:PORT[,HOST:PORT...]/PREFIX` and the TLS files: parsed once, with errors
//! that name the option; then one way to connect.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// The prefix when the URL gives none.
pub const DEFAULT_PREFIX: &str = "/overlay";
/// How long one request may take before the store counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Default)]
pub struct Tls {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `host:port` of each etcd member.
    pub members: Vec<String>,
    /// No trailing `/`; object keys are `PREFIX/nodes/NAME`, ...
    pub prefix: String,
    pub tls: Tls,
}

impl StoreConfig {
    pub fn parse(url: &str, tls: Tls) -> Result<Self> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            bail!("--store {url:?}: must start with etcd:// (etcd://HOST:PORT[,HOST:PORT...]/PREFIX)");
        };
        let (hosts, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let mut members = Vec::new();
        for h in hosts.split(',') {
            let ok = h
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                bail!("--store {url:?}: member {h:?} is not HOST:PORT");
            }
            members.push(h.to_string());
        }
        let prefix = path.trim_end_matches('/');
        let prefix = if prefix.is_empty() { DEFAULT_PREFIX.to_string() } else { prefix.to_string() };
        if prefix.contains("//") || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
            bail!("--store {url:?}: prefix {prefix:?} must be a plain /path");
        }
        if tls.cert.is_some() != tls.key.is_some() {
            bail!("--etcd-cert and --etcd-key: give both (a client certificate and its key) or neither");
        }
        Ok(Self { members, prefix, tls })
    }

    /// `etcd://members/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("etcd://{}{}", self.members.join(","), self.prefix)
    }

    pub fn key(&self, path: &str) -> String {
        format!("{}/{path}", self.prefix)
    }

    /// Everything under the prefix: `[PREFIX/, PREFIX0)`.
    pub fn range(&self) -> (String, String) {
        (format!("{}/", self.prefix), format!("{}0", self.prefix))
    }

    pub async fn connect(&self) -> Result<Client> {
        let scheme = if self.tls_on() { "https" } else { "http" };
        let endpoints: Vec<String> = self.members.iter().map(|m| format!("{scheme}://{m}")).collect();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            // A dead peer behind a silent network is noticed within seconds, not at TCP's pace.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if self.tls_on() {
            opts = opts.with_tls(self.tls_options()?);
        }
        let client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(opts)))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {}", self.url()))?;
        Ok(client)
    }

    fn tls_on(&self) -> bool {
        self.tls.cacert.is_some() || self.tls.cert.is_some()
    }

    fn tls_options(&self) -> Result<TlsOptions> {
        let read = |p: &PathBuf, opt: &str| std::fs::read(p).with_context(|| format!("{opt} {}", p.display()));
        let mut t = TlsOptions::new();
        if let Some(ca) = &self.tls.cacert {
            t = t.ca_certificate(Certificate::from_pem(read(ca, "--etcd-cacert")?));
        }
        if let (Some(c), Some(k)) = (&self.tls.cert, &self.tls.key) {
            t = t.identity(Identity::from_pem(read(c, "--etcd-cert")?, read(k, "--etcd-key")?));
        }
        Ok(t)
    }
}

/// Runs one store request with the request timeout.
pub async fn timed<T>(what: &str, f: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.with_context(|| what.to_string()),
        Err(_) => bail!("{what}: no answer within {REQUEST_TIMEOUT:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = StoreConfig::parse("etcd://10.0.0.1:2379,e2:2379/cl/one/", Tls::default()).unwrap();
        assert_eq!(c.members, ["10.0.0.1:2379", "e2:2379"]);
        assert_eq!(c.prefix, "/cl/one");
        assert_eq!(c.key("nodes/a"), "/cl/one/nodes/a");
        assert_eq!(c.range(), ("/cl/one/".to_string(), "/cl/one0".to_string()));
        assert_eq!(c.url(), "etcd://10.0.0.1:2379,e2:2379/cl/one");
        assert_eq!(StoreConfig::parse("etcd://h:1", Tls::default()).unwrap().prefix, DEFAULT_PREFIX);
        for bad in [
            "http://h:1/x",
            "etcd://h/x",
            "etcd://:1/x",
            "etcd://h:0/x",
            "etcd://h:1,/x",
            "etcd://h:1/a b",
            "etcd://h:1/a//b",
        ] {
            let e = StoreConfig::parse(bad, Tls::default()).unwrap_err().to_string();
            assert!(e.contains("--store"), "{bad}: {e}");
        }
        let half = Tls { cert: Some("c".into()), ..Default::default() };
        assert!(StoreConfig::parse("etcd://h:1/x", half).unwrap_err().to_string().contains("--etcd-key"));
    }
}
