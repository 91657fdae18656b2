//! Wall-clock time in Unix seconds: the unit grants expire in and sessions are stamped with.

/// Now, in Unix seconds (0 before 1970, which no host runs at).
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
