//! Image references by Docker's reference grammar (distribution/reference), normalised the
//! way `docker pull` does, and the registry allow-list checked against the registry *host*:
//! `docker.io.evil.com/x` is not `docker.io`, and `nvidia/cuda` is `docker.io/nvidia/cuda`.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*
//! domain     := host [ ":" port ]          host: DNS labels joined by ".", or [IPv6]
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex, algorithm [A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*, hex ≥ 32
//! ```
//! The first component is a registry host when it contains `.` or `:`, is `localhost`, or has
//! upper-case letters; otherwise the reference is on the default registry, where Docker Hub
//! adds `library/` to one-component names. The host is case-insensitive and kept lower-cased
//! (`index.docker.io` as `docker.io`): every per-registry setting is looked up by that one
//! form; the repository path is case-sensitive, and must be lower-case, as Docker requires.

use std::fmt;

use common::config::normalise_registry_host;

/// Docker Hub, as references name it after normalisation.
pub const DOCKER_HUB: &str = "docker.io";
/// The longest name (registry and repository) Docker accepts.
const MAX_NAME: usize = 255;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Host, with `:port` when given, normalised (lower-case, Docker Hub as `docker.io`):
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Path within the registry: `library/ubuntu`, `nvidia/cuda`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:…`.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("`{0}`: image name is longer than {MAX_NAME} characters")]
    TooLong(String),
    #[error("`{reference}`: repository name must be lowercase")]
    Uppercase { reference: String },
    #[error("`{reference}`: `{part}` is not a valid {what}")]
    Invalid { reference: String, part: String, what: &'static str },
}

impl ImageRef {
    /// Parses `reference`; names without a registry go to `default_registry`.
    pub fn parse(reference: &str, default_registry: &str) -> Result<Self, ReferenceError> {
        let invalid = |part: &str, what: &'static str| ReferenceError::Invalid {
            reference: reference.to_owned(),
            part: part.to_owned(),
            what,
        };
        if reference.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                if !is_digest(digest) {
                    return Err(invalid(digest, "digest (algorithm:hex, at least 32 hex digits)"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' only if no '/' comes after it (else it is a port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => {
                let tag = &rest[i + 1..];
                if !is_tag(tag) {
                    return Err(invalid(tag, "tag"));
                }
                (&rest[..i], Some(tag.to_owned()))
            }
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid(name, "name"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first != first.to_lowercase() =>
            {
                if !is_domain(first) {
                    return Err(invalid(first, "registry host"));
                }
                (first.to_owned(), path.to_owned())
            }
            _ => (default_registry.to_owned(), name.to_owned()),
        };
        // One spelling per host, the one per-registry settings are keyed by (the config's hosts
        // are normalised the same way when loaded): `GHCR.IO` is `ghcr.io`.
        let registry = normalise_registry_host(&registry);
        if path != path.to_lowercase() {
            return Err(ReferenceError::Uppercase { reference: reference.to_owned() });
        }
        for component in path.split('/') {
            if !is_component(component) {
                return Err(invalid(component, "repository path component"));
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path };
        // Docker limits the normalised name (`docker.io/library/…`), not the text as given: a
        // name that fits only before normalisation would be refused by the engine later.
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(ReferenceError::TooLong(reference.to_owned()));
        }
        Ok(Self { registry, repository, tag, digest })
    }

    /// The reference Docker pulls: with `:latest` when neither tag nor digest was given.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match (&self.tag, &self.digest) {
            (None, None) => f.write_str(":latest"),
            (tag, digest) => {
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
        }
    }
}

/// `[a-z0-9]+ ((. | _ | __ | -+) [a-z0-9]+)*`
fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[sep_start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
}

/// A DNS host (labels of letters, digits and inner hyphens) or `[IPv6]`, with an optional port
/// 1-65535.
fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, after)) => {
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match after {
                    "" => return true,
                    p => match p.strip_prefix(':') {
                        Some(port) => ("x", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (d, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else { return false };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric())
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `[docker.registry] allowed_registries`: registry hosts images may come from.
#[derive(Debug, Clone)]
pub struct RegistryPolicy {
    allowed: Vec<String>,
}

/// An image from a registry the operator did not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "image `{image}` is from registry `{registry}`, which is not in docker.registry.allowed_registries ({allowed})"
)]
pub struct NotAllowed {
    pub image: String,
    pub registry: String,
    pub allowed: String,
}

impl RegistryPolicy {
    pub fn new(allowed: &[String]) -> Self {
        Self { allowed: allowed.iter().map(|r| normalise_registry_host(r)).collect() }
    }

    /// Exact host (and port) match of normalised hosts: host names compare case-insensitively.
    pub fn check(&self, image: &ImageRef) -> Result<(), NotAllowed> {
        if self.allowed.contains(&image.registry) {
            Ok(())
        } else {
            Err(NotAllowed {
                image: image.to_string(),
                registry: image.registry.clone(),
                allowed: self.allowed.join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:8a9a7e7f1c2b3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccd";

    /// `input` parses to `expected` (canonical form) or fails with an error containing it.
    fn check(input: &str, expected: &str) {
        match ImageRef::parse(input, DOCKER_HUB) {
            Ok(r) => assert_eq!(r.to_string(), expected, "{input}"),
            Err(e) => assert!(e.to_string().contains(expected), "{input}: {e}"),
        }
    }

    #[test]
    fn normalises_like_docker() {
        check("busybox", "docker.io/library/busybox:latest");
        check("ubuntu:22.04", "docker.io/library/ubuntu:22.04");
        check("nvidia/cuda:12.2-base-ubuntu20.04", "docker.io/nvidia/cuda:12.2-base-ubuntu20.04");
        check("docker.io/ubuntu", "docker.io/library/ubuntu:latest");
        check("index.docker.io/library/ubuntu", "docker.io/library/ubuntu:latest");
        check("ghcr.io/owner/repo/sub:v1", "ghcr.io/owner/repo/sub:v1");
        check("localhost/app", "localhost/app:latest");
        check("localhost:5000/app:1", "localhost:5000/app:1");
        check("127.0.0.1:5000/test/img", "127.0.0.1:5000/test/img:latest");
        check("[::1]:5000/img", "[::1]:5000/img:latest");
        check(&format!("ghcr.io/o/r@{DIGEST}"), &format!("ghcr.io/o/r@{DIGEST}"));
        check(&format!("ghcr.io/o/r:v1@{DIGEST}"), &format!("ghcr.io/o/r:v1@{DIGEST}"));
        check("a/b__c/d-e--f.g_h", "docker.io/a/b__c/d-e--f.g_h:latest");
        // Issue 18 item 3: the host is case-insensitive and named in one form (per-registry
        // settings are looked up by it); the repository path stays case-sensitive.
        check("Registry.Example.com/app", "registry.example.com/app:latest");
        check("GHCR.IO/owner/repo:V1", "ghcr.io/owner/repo:V1");
        check("LocalHost:5000/app", "localhost:5000/app:latest");
        check("Index.Docker.IO/ubuntu", "docker.io/library/ubuntu:latest");
        check("[::AB]:5000/img", "[::ab]:5000/img:latest");
    }

    #[test]
    fn rejects_what_docker_rejects() {
        check("", "empty");
        check("UPPER", "must be lowercase");
        check("ghcr.io/Owner/repo", "must be lowercase");
        check("a:b:c", "`a:b` is not a valid repository path component");
        check("repo:", "not a valid tag");
        check("repo:-x", "not a valid tag");
        check(&format!("repo:{}", "x".repeat(129)), "not a valid tag");
        check("repo@sha256:abc", "not a valid digest");
        check("repo@sha256", "not a valid digest");
        check("https://docker.io/x", "not a valid");
        check("/repo", "not a valid repository path component");
        check("repo/", "not a valid repository path component");
        check("a//b", "not a valid repository path component");
        check("a/.b", "not a valid repository path component");
        check("a/b___c", "not a valid repository path component");
        check("a/b-", "not a valid repository path component");
        check("host:99999/x", "not a valid registry host");
        check("-host.io/x", "not a valid registry host");
        check("[zz]:5000/x", "not a valid registry host");
        check(&format!("ghcr.io/{}", "a".repeat(260)), "longer than 255");
        // Found by `make fuzz` (image_reference): the limit is on the normalised name, so a
        // name that fits only before `docker.io/library/` is added is refused here, as Docker
        // refuses it, and every accepted reference reparses from its canonical form.
        check(&"a".repeat(240), "longer than 255");
        check(&"a".repeat(237), &format!("docker.io/library/{}:latest", "a".repeat(237)));
        check(&format!("index.docker.io/x/{}", "a".repeat(240)), &format!("docker.io/x/{}:latest", "a".repeat(240)));
    }

    #[test]
    fn parsing_never_panics() {
        let alphabet = b"aZ09.:/@_-[]%sha256:abcdef ";
        let mut x = 7u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = (x >> 58) as usize;
            let s: String =
                (0..len).map(|i| alphabet[((x >> (i % 50)) as usize + i * 7) % alphabet.len()] as char).collect();
            if let Ok(r) = ImageRef::parse(&s, DOCKER_HUB) {
                // What parses re-parses to itself.
                assert_eq!(ImageRef::parse(&r.to_string(), DOCKER_HUB).unwrap().to_string(), r.to_string(), "{s}");
            }
        }
    }

    #[test]
    fn the_allow_list_matches_the_registry_host_exactly() {
        let policy = RegistryPolicy::new(&["docker.io".into(), "ghcr.io".into(), "127.0.0.1:5000".into()]);
        let allowed = |r: &str| policy.check(&ImageRef::parse(r, DOCKER_HUB).unwrap()).is_ok();
        assert!(allowed("nvidia/cuda:12.2-base-ubuntu20.04"));
        assert!(allowed("busybox"));
        assert!(allowed("GHCR.io/o/r"));
        // The error names the host in the one form the policy and the settings use.
        let err = policy.check(&ImageRef::parse("QUAY.io/o/r", DOCKER_HUB).unwrap()).unwrap_err();
        assert_eq!(err.registry, "quay.io");
        assert!(allowed("127.0.0.1:5000/test"));
        assert!(!allowed("docker.io.evil.com/library/ubuntu"));
        assert!(!allowed("evil.com/docker.io/ubuntu"));
        assert!(!allowed("ghcr.io.evil.com/o/r"));
        assert!(!allowed("127.0.0.1:5001/test"));
        assert!(!allowed("127.0.0.1/test"));
        assert!(!allowed("quay.io/o/r"));
        let err = policy.check(&ImageRef::parse("quay.io/o/r", DOCKER_HUB).unwrap()).unwrap_err();
        assert!(err.to_string().contains("registry `quay.io`, which is not in docker.registry.allowed_registries"));
        // A default registry other than Docker Hub adds no `library/`.
        assert_eq!(ImageRef::parse("app", "127.0.0.1:5000").unwrap().to_string(), "127.0.0.1:5000/app:latest");
    }
}
