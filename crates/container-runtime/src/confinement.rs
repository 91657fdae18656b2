//! What confines a tenant container beyond its capabilities, as the engine offers it: Docker's
//! built-in seccomp profile, pinned; AppArmor's `docker-default` profile where the host has
//! AppArmor; and whether the engine remaps user namespaces. Read from the engine's `info` and
//! API version once at connect, so a daemon whose default is `unconfined` (or a custom profile)
//! cannot silently apply to tenants.
//!
//! Pinning seccomp: engines from Docker 23 (API 1.42) accept `seccomp=builtin`, their own
//! built-in profile whatever the daemon's default; that is sent. Older engines know no name for
//! it (`builtin` and `default` are read as a file or JSON and refused), and apply their
//! built-in profile only as the default: there the engine must report `profile=default`, and
//! any other default (`unconfined`, a custom file) refuses to start the service, as does an
//! engine without seccomp at all. Embedding a copy of the profile and sending its JSON was not
//! chosen: a stale copy would refuse syscalls the engine's own profile allows.

/// The oldest engine API that accepts `seccomp=builtin` (Docker 23.0).
const BUILTIN_SECCOMP_API: (u32, u32) = (1, 42);

/// How the engine confines every tenant container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// `security_opt` entries for seccomp: `seccomp=builtin`, or none where the engine's default
    /// was checked to be its built-in profile.
    seccomp: Option<&'static str>,
    /// The host has AppArmor (the engine reports it): `apparmor=docker-default`.
    pub apparmor: bool,
    /// The engine remaps user namespaces (`userns-remap`).
    pub userns: bool,
}

/// An engine that cannot confine tenant containers as required.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfinementError {
    #[error(
        "the Docker engine reports no seccomp (a kernel without it?): tenant containers would run without a syscall filter"
    )]
    NoSeccomp,
    #[error(
        "the Docker engine's default seccomp profile is `{profile}`, and this engine (API {api}) cannot be told to use its built-in one: remove `seccomp-profile` from its daemon.json, or use Docker 23 or later"
    )]
    Unpinnable { profile: String, api: String },
}

impl Confinement {
    /// From the engine's `SecurityOptions` (`name=seccomp,profile=default`, `name=apparmor`,
    /// `name=userns`, ...) and its API version (`1.41`).
    pub fn from_engine(security_options: &[String], api_version: &str) -> Result<Self, ConfinementError> {
        let options: Vec<Vec<(&str, &str)>> = security_options
            .iter()
            .map(|o| o.split(',').map(|kv| kv.split_once('=').unwrap_or((kv, ""))).collect())
            .collect();
        let named = |name: &str| options.iter().find(|o| o.iter().any(|&(k, v)| k == "name" && v == name));
        let seccomp_profile = named("seccomp")
            .ok_or(ConfinementError::NoSeccomp)?
            .iter()
            .find_map(|&(k, v)| (k == "profile").then(|| v.to_owned()))
            .unwrap_or_default();
        let seccomp = if api_at_least(api_version, BUILTIN_SECCOMP_API) {
            Some("seccomp=builtin")
        } else if seccomp_profile == "default" {
            None
        } else {
            return Err(ConfinementError::Unpinnable { profile: seccomp_profile, api: api_version.to_owned() });
        };
        Ok(Self { seccomp, apparmor: named("apparmor").is_some(), userns: named("userns").is_some() })
    }

    /// Every container's `security_opt`.
    pub fn security_opt(&self) -> Vec<String> {
        let mut opts = vec!["no-new-privileges:true".to_owned()];
        opts.extend(self.seccomp.map(str::to_owned));
        if self.apparmor {
            opts.push("apparmor=docker-default".to_owned());
        }
        opts
    }

    /// One line for `executor validate`.
    pub fn describe(&self) -> String {
        let seccomp = match self.seccomp {
            Some(_) => "seccomp: the engine's built-in profile, pinned (seccomp=builtin)",
            None => "seccomp: the engine's built-in profile (its default, checked at start)",
        };
        let apparmor = if self.apparmor { "AppArmor: docker-default" } else { "AppArmor: not on this host" };
        format!("{seccomp}; {apparmor}")
    }
}

/// Whether `version` (`1.41`) is at least `min`; unreadable versions are not.
fn api_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= min,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(options: &[&str], api: &str) -> Result<Vec<String>, String> {
        let options: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
        Confinement::from_engine(&options, api).map(|c| c.security_opt()).map_err(|e| e.to_string())
    }

    #[test]
    fn seccomp_is_pinned_and_apparmor_used_where_the_host_has_it() {
        let nnp = "no-new-privileges:true";
        // Docker 20.10 with its built-in default (this machine's engine).
        assert_eq!(check(&["name=seccomp,profile=default"], "1.41").unwrap(), [nnp]);
        // Docker 23+: pinned by name, whatever the daemon's default.
        let pinned = [nnp, "seccomp=builtin", "apparmor=docker-default"];
        assert_eq!(check(&["name=apparmor", "name=seccomp,profile=builtin", "name=cgroupns"], "1.47").unwrap(), pinned);
        assert_eq!(check(&["name=apparmor", "name=seccomp,profile=unconfined"], "1.43").unwrap(), pinned);
        // Old engines with another default cannot be pinned; no seccomp at all is refused.
        let err = check(&["name=seccomp,profile=unconfined"], "1.41").unwrap_err();
        assert!(err.contains("default seccomp profile is `unconfined`"), "{err}");
        let err = check(&["name=seccomp,profile=/etc/docker/seccomp.json"], "1.40").unwrap_err();
        assert!(err.contains("`/etc/docker/seccomp.json`"), "{err}");
        assert!(check(&["name=apparmor"], "1.47").unwrap_err().contains("no seccomp"));
        assert!(check(&[], "1.47").is_err());
    }

    #[test]
    fn user_namespace_remapping_is_read_from_the_engine() {
        let c = |o: &[&str]| {
            Confinement::from_engine(&o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), "1.41").unwrap()
        };
        assert!(c(&["name=seccomp,profile=default", "name=userns"]).userns);
        assert!(!c(&["name=seccomp,profile=default"]).userns);
        assert!(!api_at_least("x", (1, 42)) && api_at_least("1.42", (1, 42)) && !api_at_least("1.9", (1, 42)));
    }
}
