//! Name rules of the registry: hostnames, network names and tags
//! (`spec/registry.md` §6). Error texts are the reference's reasons so that
//! they can be passed through to clients.

use super::limits::{BACKBONE_NAME, MAX_HOSTNAME_LEN, MAX_TAG_LEN, MAX_TAGS, RESERVED_HOSTNAMES};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Longer than 63 characters.
    #[error("hostname too long (max 63 chars)")]
    HostnameTooLong,
    /// Wrong character set or shape.
    #[error("hostname must be lowercase alphanumeric with hyphens, start/end with alphanumeric")]
    HostnameCharset,
    /// One of the reserved names.
    #[error("hostname \"{0}\" is reserved")]
    HostnameReserved(String),
    /// Network name missing.
    #[error("network name required")]
    NetworkNameRequired,
    /// Network name longer than 63 characters.
    #[error("network name too long (max 63 chars)")]
    NetworkNameTooLong,
    /// Network name has the wrong shape.
    #[error(
        "network name must be lowercase alphanumeric with hyphens, start/end with alphanumeric"
    )]
    NetworkNameCharset,
    /// Network name `backbone` is reserved.
    #[error("network name \"{0}\" is reserved")]
    NetworkNameReserved(String),
    /// More than 10 tags.
    #[error("too many tags (max 10)")]
    TooManyTags,
    /// An empty tag.
    #[error("empty tag not allowed")]
    EmptyTag,
    /// A tag longer than 32 characters.
    #[error("tag \"{0}\" too long (max 32 chars)")]
    TagTooLong(String),
    /// A tag with the wrong shape.
    #[error("tag \"{0}\" must be lowercase alphanumeric with hyphens")]
    TagCharset(String),
}

/// `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$` (length checked by the caller).
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => alnum(f) && alnum(l) && b.iter().all(|c| alnum(c) || *c == b'-'),
        _ => false,
    }
}

/// Checks a hostname. The empty string is valid (it clears the hostname).
pub fn hostname(h: &str) -> Result<(), NameError> {
    if h.is_empty() {
        return Ok(());
    }
    if h.len() > MAX_HOSTNAME_LEN {
        return Err(NameError::HostnameTooLong);
    }
    if !is_label(h) {
        return Err(NameError::HostnameCharset);
    }
    if RESERVED_HOSTNAMES.contains(&h) {
        return Err(NameError::HostnameReserved(h.to_owned()));
    }
    Ok(())
}

/// Checks a network name (required, same shape as a hostname, `backbone`
/// reserved).
pub fn network_name(n: &str) -> Result<(), NameError> {
    if n.is_empty() {
        return Err(NameError::NetworkNameRequired);
    }
    if n.len() > MAX_HOSTNAME_LEN {
        return Err(NameError::NetworkNameTooLong);
    }
    if !is_label(n) {
        return Err(NameError::NetworkNameCharset);
    }
    if n == BACKBONE_NAME {
        return Err(NameError::NetworkNameReserved(n.to_owned()));
    }
    Ok(())
}

/// Normalises and checks a tag list: strips one leading `#`, removes
/// duplicates (keeping the first), enforces the count and shape rules.
pub fn tags(raw: &[String]) -> Result<Vec<String>, NameError> {
    if raw.len() > MAX_TAGS {
        return Err(NameError::TooManyTags);
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for t in raw {
        let t = t.strip_prefix('#').unwrap_or(t);
        if t.is_empty() {
            return Err(NameError::EmptyTag);
        }
        if t.len() > MAX_TAG_LEN {
            return Err(NameError::TagTooLong(
                t.chars().take(MAX_TAG_LEN + 8).collect(),
            ));
        }
        if !is_label(t) {
            return Err(NameError::TagCharset(
                t.chars().take(MAX_TAG_LEN + 8).collect(),
            ));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["", "a", "alice", "a-b", "0", "a1-2b", &"a".repeat(63)] {
            assert_eq!(hostname(ok), Ok(()), "{ok}");
        }
        assert_eq!(hostname(&"a".repeat(64)), Err(NameError::HostnameTooLong));
        for bad in ["-a", "a-", "A", "a_b", "a.b", "é", " a", "-"] {
            assert_eq!(hostname(bad), Err(NameError::HostnameCharset), "{bad}");
        }
        for r in ["localhost", "backbone", "broadcast"] {
            assert_eq!(hostname(r), Err(NameError::HostnameReserved(r.into())));
        }
        assert_eq!(
            NameError::HostnameReserved("localhost".into()).to_string(),
            "hostname \"localhost\" is reserved"
        );
    }

    #[test]
    fn network_names() {
        assert_eq!(network_name(""), Err(NameError::NetworkNameRequired));
        assert_eq!(
            network_name("backbone"),
            Err(NameError::NetworkNameReserved("backbone".into()))
        );
        assert_eq!(network_name("Lab"), Err(NameError::NetworkNameCharset));
        assert_eq!(
            network_name(&"n".repeat(64)),
            Err(NameError::NetworkNameTooLong)
        );
        assert_eq!(network_name("lab-1"), Ok(()));
    }

    #[test]
    fn tag_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(tags(&s(&["#gpu", "gpu", "eu-1"])), Ok(s(&["gpu", "eu-1"])));
        assert_eq!(tags(&s(&[])), Ok(vec![]));
        assert_eq!(tags(&s(&["#"])), Err(NameError::EmptyTag));
        assert_eq!(tags(&s(&["GPU"])), Err(NameError::TagCharset("GPU".into())));
        let long = "t".repeat(33);
        assert_eq!(
            tags(std::slice::from_ref(&long)),
            Err(NameError::TagTooLong(long))
        );
        assert_eq!(tags(&s(&["a"; 11])), Err(NameError::TooManyTags));
        assert_eq!(tags(&s(&["a"; 10])), Ok(s(&["a"])));
    }
}
