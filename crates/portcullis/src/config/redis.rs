//! The forms of `session.redis_url`: one node, a Sentinel group, or a Cluster.
//!
//! - `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS), `redis+unix:///path` — one node;
//!   handed to redis-rs as is.
//! - `redis+sentinel://[user:pass@]h1:26379,h2:26379/<service>[/db]`, `rediss+sentinel://…` —
//!   the master of `<service>`, found through the sentinels. `user:pass` is for the Redis
//!   nodes; the sentinels are asked without credentials unless `session.redis_sentinel_password`
//!   (and `_username`) is set, since sentinels often run without ACL or with their own.
//! - `redis+cluster://[user:pass@]h1:p1,h2:p2[,…]`, `rediss+cluster://…` — seed nodes of a
//!   Cluster (the rest of the topology is discovered from them). Cluster has no db number.

use std::fmt;

/// A `host:port` of a multi-host URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisNode {
    pub host: String,
    pub port: u16,
}

impl fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Credentials of an ACL user (or the default user's password when `username` is `None`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the sessions are, parsed from `session.redis_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    /// One node; the URL is redis-rs' own form.
    Single { url: String },
    /// The master of `service`, found through `sentinels`.
    Sentinel { tls: bool, sentinels: Vec<RedisNode>, service: String, db: i64, auth: RedisAuth },
    /// A Cluster reached through its seed nodes.
    Cluster { tls: bool, seeds: Vec<RedisNode>, auth: RedisAuth },
}

impl RedisTopology {
    /// Parses `text`; the error says what is wrong without repeating the URL (it may hold a password).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text.split_once("://").ok_or("not a URL: expected <scheme>://…")?;
        match scheme {
            "redis" | "rediss" | "redis+unix" => {
                redis_url_is_valid(text)?;
                Ok(Self::Single { url: text.to_string() })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let (auth, hosts, path) = split_multi_host(rest)?;
                let sentinels = parse_nodes(hosts, 26379)?;
                let mut parts = path.split('/').filter(|p| !p.is_empty());
                let service = parts.next().ok_or("a Sentinel URL needs the service (master) name: redis+sentinel://h1:26379,h2:26379/<service>[/db]")?;
                let db = match parts.next() {
                    Some(db) => db.parse::<i64>().map_err(|_| format!("database number {db:?} is not a number"))?,
                    None => 0,
                };
                if parts.next().is_some() {
                    return Err("too many path segments: expected /<service>[/db]".into());
                }
                Ok(Self::Sentinel { tls: scheme.starts_with("rediss"), sentinels, service: percent_decode(service)?, db, auth })
            }
            "redis+cluster" | "rediss+cluster" => {
                let (auth, hosts, path) = split_multi_host(rest)?;
                if !path.trim_matches('/').is_empty() {
                    return Err("a Cluster has only database 0: no path after the seed nodes".into());
                }
                Ok(Self::Cluster { tls: scheme.starts_with("rediss"), seeds: parse_nodes(hosts, 6379)?, auth })
            }
            _ => Err(
                "must start with redis://, rediss://, redis+unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"
                    .into(),
            ),
        }
    }

    /// Whether the connections use TLS.
    pub fn tls(&self) -> bool {
        match self {
            Self::Single { url } => url.starts_with("rediss://"),
            Self::Sentinel { tls, .. } | Self::Cluster { tls, .. } => *tls,
        }
    }
}

fn redis_url_is_valid(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
    if url.scheme() != "redis+unix" {
        if url.host_str().is_none_or(str::is_empty) {
            return Err("no host".into());
        }
        let db = url.path().trim_matches('/');
        if !db.is_empty() && db.parse::<i64>().is_err() {
            return Err(format!("database number {db:?} is not a number"));
        }
    }
    Ok(())
}

/// `[user:pass@]h1:p1,h2:p2[/path]` → credentials, host list, path.
fn split_multi_host(rest: &str) -> Result<(RedisAuth, &str, &str), String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('?') || path.contains('?') {
        return Err("query parameters are not supported here; put credentials before the '@'".into());
    }
    let (auth, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let auth = match userinfo.split_once(':') {
                Some((user, pass)) => {
                    RedisAuth { username: Some(percent_decode(user)?).filter(|u| !u.is_empty()), password: Some(percent_decode(pass)?) }
                }
                // `redis://secret@host` means a password in redis-rs' single-node form; the same here.
                None => RedisAuth { username: None, password: Some(percent_decode(userinfo)?) },
            };
            (auth, hosts)
        }
        None => (RedisAuth::default(), authority),
    };
    Ok((auth, hosts, path))
}

fn parse_nodes(hosts: &str, default_port: u16) -> Result<Vec<RedisNode>, String> {
    let nodes = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            // `[::1]:6379` for IPv6.
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') => {
                    (host, port.parse::<u16>().map_err(|_| format!("port of {h:?} is not a number"))?)
                }
                _ => (h, default_port),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("empty host in {h:?}"));
            }
            Ok(RedisNode { host: host.to_string(), port })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if nodes.is_empty() {
        return Err("no host: list at least one host:port".into());
    }
    Ok(nodes)
}

fn percent_decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "credentials are not valid UTF-8 after percent-decoding".into())
}

/// A multi-host URL with its password replaced by `redacted`; `None` when it is not one.
pub(super) fn redact_multi_host(text: &str, redacted: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    if !scheme.ends_with("+sentinel") && !scheme.ends_with("+cluster") {
        return None;
    }
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{redacted}@{hosts}"),
            None => format!("{redacted}@{hosts}"),
        },
        None => authority.to_string(),
    };
    // A query may carry a password too; it is refused by the parser, and never shown.
    let path = match path.split_once('?') {
        Some((path, _)) => format!("{path}?{redacted}"),
        None => path.to_string(),
    };
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: u16) -> RedisNode {
        RedisNode { host: host.into(), port }
    }

    #[test]
    fn sentinel_urls() {
        let t = RedisTopology::parse("rediss+sentinel://app:p%40ss@s1:26379,s2,[::1]:26380/mymaster/3").unwrap();
        assert_eq!(
            t,
            RedisTopology::Sentinel {
                tls: true,
                sentinels: vec![node("s1", 26379), node("s2", 26379), node("::1", 26380)],
                service: "mymaster".into(),
                db: 3,
                auth: RedisAuth { username: Some("app".into()), password: Some("p@ss".into()) },
            }
        );
        assert!(RedisTopology::parse("redis+sentinel://s1:26379").unwrap_err().contains("service"));
        assert!(RedisTopology::parse("redis+sentinel://s1:26379/m/x").unwrap_err().contains("database"));
    }

    #[test]
    fn cluster_urls() {
        let t = RedisTopology::parse("redis+cluster://:secret@h1:7000,h2:7001").unwrap();
        assert_eq!(
            t,
            RedisTopology::Cluster {
                tls: false,
                seeds: vec![node("h1", 7000), node("h2", 7001)],
                auth: RedisAuth { username: None, password: Some("secret".into()) }
            }
        );
        assert!(RedisTopology::parse("redis+cluster://h1:7000/2").unwrap_err().contains("database 0"));
        assert!(RedisTopology::parse("redis+cluster://h1:x").unwrap_err().contains("port"));
        assert!(RedisTopology::parse("redis+cluster://").unwrap_err().contains("no host"));
    }

    #[test]
    fn single_node_urls() {
        assert!(RedisTopology::parse("rediss://u:p@cache:6380/2").unwrap().tls());
        assert!(RedisTopology::parse("redis://cache/abc").unwrap_err().contains("database"));
        assert!(RedisTopology::parse("memcached://x").is_err());
    }

    #[test]
    fn multi_host_urls_are_redacted() {
        assert_eq!(redact_multi_host("redis+cluster://u:hunter2@h1:1,h2:2", "<r>").unwrap(), "redis+cluster://u:<r>@h1:1,h2:2");
        assert_eq!(redact_multi_host("redis+sentinel://hunter2@h1/m/1", "<r>").unwrap(), "redis+sentinel://<r>@h1/m/1");
        assert_eq!(redact_multi_host("redis+sentinel://h1/m?password=hunter2", "<r>").unwrap(), "redis+sentinel://h1/m?<r>");
        assert!(redact_multi_host("redis://u:p@h", "<r>").is_none());
    }
}
