//! Image references (container-runtime `reference.rs`): any string either parses or is an
//! error; a parsed reference reparses to itself from its canonical form, and its registry is
//! exactly the host the text names, normalised (`docker.io.evil.com/x` is never `docker.io`).

use common::config::normalise_registry_host;
use container_runtime::reference::{DOCKER_HUB, ImageRef, RegistryPolicy};

pub(crate) fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for default in [DOCKER_HUB, "127.0.0.1:5000"] {
        let parsed = match ImageRef::parse(text, default) {
            Ok(parsed) => parsed,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                continue;
            }
        };
        let canonical = parsed.canonical();
        let again = ImageRef::parse(&canonical, "other.invalid")
            .unwrap_or_else(|e| panic!("`{text}` parsed to `{canonical}`, which does not reparse: {e}"));
        assert_eq!(again.registry, parsed.registry, "{text}");
        assert_eq!(again.repository, parsed.repository, "{text}");
        assert_eq!(again.digest, parsed.digest, "{text}");
        let tag = match (&parsed.tag, &parsed.digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag.clone(),
        };
        assert_eq!(again.tag, tag, "{text}");
        assert_eq!(again.canonical(), canonical, "{text}");

        // The registry is the default or the first path element of the text, in its one
        // spelling (lower-case, `index.docker.io` as `docker.io`).
        if parsed.registry != default {
            let named = text.split('/').next().unwrap_or_default();
            assert_eq!(parsed.registry, normalise_registry_host(named), "{text}");
        }
        assert!(!parsed.registry.contains('/'), "{text}");
        assert!(RegistryPolicy::new(std::slice::from_ref(&parsed.registry)).check(&parsed).is_ok());
        let lookalike = format!("{}.evil.example", parsed.registry);
        assert!(RegistryPolicy::new(&[lookalike]).check(&parsed).is_err(), "{text}");
    }
}
