//! One type for the connections to a single Redis server and to a Redis Cluster, so the engine's
//! code is the same for both: commands and scripts are routed by their first key (every key of
//! a channel shares a hash slot), and publications use sharded pub/sub (`SSUBSCRIBE`,
//! `SPUBLISH`), which a single server serves like any other channel.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value};

/// Where Redis is: `redis://host:port/db` for one server, or
/// `redis+cluster://host:port,host:port` for a Redis Cluster (any reachable nodes as seeds);
/// `rediss://` and `rediss+cluster://` for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server (a primary, possibly behind a failover proxy).
    Single(String),
    /// Seed nodes of a Redis Cluster, each as a `redis://` URL.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads a URL; every connection asks for RESP3, which pub/sub on a multiplexed connection
    /// needs.
    pub fn parse(url: &str) -> Result<Self, String> {
        let cluster = [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")]
            .into_iter()
            .find_map(|(scheme, single)| url.strip_prefix(scheme).map(|rest| (single, rest)));
        let Some((scheme, rest)) = cluster else {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err("must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL".into());
            }
            return Ok(Self::Single(with_resp3(url)));
        };
        // Credentials and the query apply to every seed: `user:pass@a:1,b:2?x=y`.
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), rest),
        };
        let (hosts, query) = match hosts.split_once('?') {
            Some((hosts, query)) => (hosts, format!("?{query}")),
            None => (hosts, String::new()),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|host| with_resp3(&format!("{scheme}{credentials}{host}{query}")))
            .collect();
        if seeds.is_empty() {
            return Err("a redis+cluster:// URL must name at least one node".into());
        }
        Ok(Self::Cluster(seeds))
    }
}

/// A database or Redis URL fit for logs and `Debug`: the password of `user:password@` and of a
/// `password=` query parameter replaced by `***`.
pub fn redacted(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out =
        match base.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?))) {
            Some((scheme, (credentials, hosts))) => match credentials.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{hosts}"),
                None => format!("{scheme}://***@{hosts}"),
            },
            None => base.to_owned(),
        };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{out}?{}", pairs.join("&"));
    }
    out
}

fn with_resp3(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}protocol=resp3")
}

/// A connection (multiplexed, reconnecting) to one server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    /// One server.
    Single(ConnectionManager),
    /// A cluster: one connection per node, commands routed by slot.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects; `push` receives pub/sub messages and disconnections (pass it for the pub/sub
    /// connection only).
    /// With TLS (`rediss`), the server's certificate is checked against `ca_pem` (PEM
    /// certificates) when given, else against the system's trusted roots.
    pub async fn open(
        target: &Target,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
        push: Option<Box<dyn Fn(PushInfo) + Send + Sync>>,
    ) -> RedisResult<Self> {
        // One crypto provider for every TLS user in the process (a no-op when already set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates =
            || redis::TlsCertificates { client_tls: None, root_cert: ca_pem.map(<[u8]>::to_vec) };
        match target {
            Target::Single(url) => {
                let client = if url.starts_with("rediss://") && ca_pem.is_some() {
                    redis::Client::build_with_tls(url.as_str(), certificates())?
                } else {
                    redis::Client::open(url.as_str())?
                };
                let mut config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2);
                if let Some(push) = push {
                    config = config
                        .set_push_sender(move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                            push(info);
                            Ok(())
                        })
                        .set_automatic_resubscription();
                }
                Ok(Self::Single(client.get_connection_manager_with_config(config).await?))
            }
            Target::Cluster(seeds) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2);
                if seeds.iter().any(|seed| seed.starts_with("rediss://")) && ca_pem.is_some() {
                    builder = builder.certs(certificates());
                }
                if let Some(push) = push {
                    builder =
                        builder.push_sender(move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                            push(info);
                            Ok(())
                        });
                }
                Ok(Self::Cluster(builder.build()?.get_async_connection().await?))
            }
        }
    }

    /// Subscribes to a sharded channel (on the node that owns its slot, in a cluster).
    pub async fn ssubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            // One channel is answered with one confirmation, which the connection takes as
            // the reply (and tracks, to subscribe again after a reconnect).
            Self::Single(conn) => redis::cmd("SSUBSCRIBE").arg(channel).exec_async(conn).await,
            Self::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    /// Unsubscribes from a sharded channel.
    pub async fn sunsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Single(conn) => redis::cmd("SUNSUBSCRIBE").arg(channel).exec_async(conn).await,
            Self::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn a_plain_url_is_one_server_speaking_resp3() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/2").unwrap(),
            Target::Single("redis://127.0.0.1:6379/2?protocol=resp3".into())
        );
        assert_eq!(
            Target::parse("redis://h?db=1").unwrap(),
            Target::Single("redis://h?db=1&protocol=resp3".into())
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redacted("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(super::redacted("rediss://hunter2@h"), "rediss://***@h");
        assert_eq!(super::redacted("redis://h:1"), "redis://h:1");
        assert_eq!(
            super::redacted("postgres://db/app?password=x&sslmode=require"),
            "postgres://db/app?password=***&sslmode=require"
        );
        assert_eq!(super::redacted("postgres://u@db/app?password=x"), "postgres://***@db/app?password=***");
    }

    #[test]
    fn a_cluster_url_lists_its_seeds_with_shared_credentials() {
        assert_eq!(
            Target::parse("redis+cluster://u:p@a:7000, b:7001").unwrap(),
            Target::Cluster(vec![
                "redis://u:p@a:7000?protocol=resp3".into(),
                "redis://u:p@b:7001?protocol=resp3".into()
            ])
        );
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("http://secret@h").unwrap_err().contains("redis+cluster://"));
        assert_eq!(
            Target::parse("rediss+cluster://a:1").unwrap(),
            Target::Cluster(vec!["rediss://a:1?protocol=resp3".into()])
        );
    }
}
