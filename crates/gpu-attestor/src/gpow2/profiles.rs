//! GPU profiles (GPOW.md, "Profiles"): what a claimed GPU must do and in how long. The built-in
//! table is `crates/gpu-attestor/profiles.json`; validators may load their own. Names match
//! NVML's exactly, never by substring. Loading checks the structure (fields, uniqueness, valid
//! work, plausible references); the production formulas are functions here, and a test holds
//! the built-in table to them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::challenge::{Challenge, ChallengeError, GpuWork};

/// The built-in table.
pub const BUILTIN: &str = include_str!("../../profiles.json");
pub const SCHEMA_VERSION: u32 = 1;
/// A profiles file is a few kilobytes; anything far larger is not one.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Runs behind a `measured` reference, at least (GPOW.md: the median of ≥ 20).
pub const MIN_MEASURED_RUNS: u32 = 20;

/// Production phase A: m = n = 4096, k = 32768.
pub const PRODUCTION_DIM: u32 = 4096;
pub const PRODUCTION_K: u32 = 32768;
/// Phase A's target at peak, in tenths of a second (1.4 s), and the count's rounding step.
const TARGET_DECISECONDS: u128 = 14;
const COUNT_STEP: u128 = 160;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesFile {
    pub schema_version: u32,
    /// Free text for people; ignored.
    #[serde(default)]
    pub comment: String,
    pub profiles: Vec<Profile>,
}

/// One GPU product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short stable name, `[a-z0-9-]+`.
    pub id: String,
    /// The exact NVML names this profile covers.
    pub nvml_names: Vec<String>,
    /// Memory as NVML reports it, bytes.
    pub memory_bytes: u64,
    /// Dense int8 tensor peak, 10¹² operations per second.
    pub int8_dense_tops: u32,
    /// Memory bandwidth, 10⁹ bytes per second.
    pub memory_bandwidth_gb_s: u32,
    /// The work a validator asks of this GPU.
    pub work: GpuWork,
    pub time: TimeReferences,
}

/// The time a phase takes on this GPU; the validator's limits are a margin over these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeReferences {
    /// Challenge to `commit_a`.
    pub phase_a: TimeReference,
    /// `commit_a` to `built`: the cache and the dataset.
    pub build: TimeReference,
    /// `walk` to `commit_b`.
    pub walk: TimeReference,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TimeReference {
    /// From GPOW.md's formulas; see [`Profile::estimated`].
    Estimated { ms: u64 },
    /// The median of `runs` runs on the hardware at stock clocks.
    Measured { ms: u64, runs: u32, date: String, driver: String },
}

impl TimeReference {
    pub fn ms(&self) -> u64 {
        match self {
            TimeReference::Estimated { ms } | TimeReference::Measured { ms, .. } => *ms,
        }
    }

    pub fn is_measured(&self) -> bool {
        matches!(self, TimeReference::Measured { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {size} bytes is larger than any profiles file")]
    TooLarge { path: String, size: u64 },
    #[error("not a profiles file: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("schema_version = {0}: this build reads version {SCHEMA_VERSION}")]
    Version(u32),
    #[error("profiles: the file has none")]
    Empty,
    #[error("profiles[{index}].id = `{id}`: must be [a-z0-9-]+ and unique")]
    Id { index: usize, id: String },
    #[error("profiles[{index}].nvml_names: `{name}` already names profile `{other}`")]
    Name { index: usize, name: String, other: String },
    #[error("profiles[{index}].nvml_names: an empty name")]
    EmptyName { index: usize },
    #[error("profiles[{index}].nvml_names: a profile covers at least one name")]
    NoNames { index: usize },
    #[error("profiles[{index}].{field}: must be greater than 0")]
    Zero { index: usize, field: &'static str },
    #[error("profiles[{index}].work: {source}")]
    Work { index: usize, source: ChallengeError },
    #[error("profiles[{index}].work.items = 0: a profile proves memory too")]
    NoPhaseB { index: usize },
    #[error("profiles[{index}].time.{phase}: {reason}")]
    Time { index: usize, phase: &'static str, reason: String },
}

impl ProfilesFile {
    /// The built-in table, checked.
    pub fn builtin() -> Result<Self, ProfileError> {
        Self::parse(BUILTIN)
    }

    /// A validator's own file, size-capped, checked.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let read = |e: std::io::Error| ProfileError::Read { path: path.display().to_string(), reason: e.to_string() };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_FILE_BYTES {
            return Err(ProfileError::TooLarge { path: path.display().to_string(), size });
        }
        Self::parse(&std::fs::read_to_string(path).map_err(read)?)
    }

    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let file: Self = serde_json::from_str(text)?;
        file.check()?;
        Ok(file)
    }

    /// The structure GPOW.md asks for: a known version, unique ids and names, valid work with
    /// phase B, positive figures, and measured references that say how they were measured.
    pub fn check(&self) -> Result<(), ProfileError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ProfileError::Version(self.schema_version));
        }
        if self.profiles.is_empty() {
            return Err(ProfileError::Empty);
        }
        for (index, p) in self.profiles.iter().enumerate() {
            let id_ok =
                !p.id.is_empty() && p.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !id_ok || self.profiles[..index].iter().any(|o| o.id == p.id) {
                return Err(ProfileError::Id { index, id: p.id.clone() });
            }
            if p.nvml_names.is_empty() {
                return Err(ProfileError::NoNames { index });
            }
            for (i, name) in p.nvml_names.iter().enumerate() {
                let other = self.profiles[..index]
                    .iter()
                    .find(|o| o.nvml_names.contains(name))
                    .map(|o| o.id.clone())
                    .or_else(|| p.nvml_names[..i].contains(name).then(|| p.id.clone()));
                if name.trim().is_empty() {
                    return Err(ProfileError::EmptyName { index });
                }
                if let Some(other) = other {
                    return Err(ProfileError::Name { index, name: name.clone(), other });
                }
            }
            for (field, value) in [
                ("memory_bytes", p.memory_bytes),
                ("int8_dense_tops", u64::from(p.int8_dense_tops)),
                ("memory_bandwidth_gb_s", u64::from(p.memory_bandwidth_gb_s)),
            ] {
                if value == 0 {
                    return Err(ProfileError::Zero { index, field });
                }
            }
            Challenge { gpus: vec![p.work], ..Challenge::plain(0, 16, 1, 0) }
                .validate()
                .map_err(|source| ProfileError::Work { index, source })?;
            if p.work.items == 0 {
                return Err(ProfileError::NoPhaseB { index });
            }
            for (phase, reference) in [("phase_a", &p.time.phase_a), ("build", &p.time.build), ("walk", &p.time.walk)] {
                let time = |reason: &str| ProfileError::Time { index, phase, reason: reason.to_string() };
                if reference.ms() == 0 {
                    return Err(time("ms must be greater than 0"));
                }
                if let TimeReference::Measured { runs, date, driver, .. } = reference {
                    if *runs < MIN_MEASURED_RUNS {
                        return Err(time(&format!(
                            "runs = {runs}: a measured reference is the median of at least {MIN_MEASURED_RUNS}"
                        )));
                    }
                    if date.trim().is_empty() || driver.trim().is_empty() {
                        return Err(time("a measured reference names its date and driver"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The profile whose names include `nvml_name` exactly.
    pub fn lookup(&self, nvml_name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.nvml_names.iter().any(|n| n == nvml_name))
    }
}

/// Estimated time references, milliseconds rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimates {
    pub phase_a_ms: u64,
    pub build_ms: u64,
    pub walk_ms: u64,
}

fn ceil_ms(numerator: u128, denominator: u128) -> u64 {
    u64::try_from(numerator.div_ceil(denominator)).unwrap_or(u64::MAX)
}

impl Profile {
    /// GPOW.md's estimates for this profile's work: phase A `ops / (peak × 0.6)`; the walk
    /// `16 × dataset bytes / (bandwidth × 0.5)`; the build `17 × dataset bytes / (bandwidth × 0.5)`
    /// (each item written once after reading 16 cache items of 64 bytes: our reading of
    /// "traffic" for the build, which GPOW.md leaves open).
    pub fn estimated(&self) -> Estimates {
        let peak = u128::from(self.int8_dense_tops) * 1_000_000_000_000;
        let bandwidth = u128::from(self.memory_bandwidth_gb_s) * 1_000_000_000;
        let dataset = u128::from(self.work.items) * 64;
        Estimates {
            // ops · 1000 / (peak · 6/10)
            phase_a_ms: ceil_ms(self.work.ops() * 10_000, peak * 6),
            build_ms: ceil_ms(17 * dataset * 2000, bandwidth),
            walk_ms: ceil_ms(16 * dataset * 2000, bandwidth),
        }
    }
}

/// Production products for a GPU of `tops` dense int8 TOPS: 1.4 s at peak, rounded to the
/// nearest multiple of 160 (the rule that gives GPOW.md's 2560, 1920 and 800).
pub fn production_count(tops: u32) -> u32 {
    let per_product = 2 * u128::from(PRODUCTION_DIM) * u128::from(PRODUCTION_DIM) * u128::from(PRODUCTION_K);
    let numerator = TARGET_DECISECONDS * u128::from(tops) * 1_000_000_000_000;
    let denominator = 10 * per_product * COUNT_STEP;
    let steps = (2 * numerator + denominator) / (2 * denominator);
    u32::try_from(steps * COUNT_STEP).unwrap_or(u32::MAX)
}

/// Production items for a GPU with `memory_bytes`: ⌊0.9 × memory / 64⌋ rounded down to a
/// multiple of 32.
pub fn production_items(memory_bytes: u64) -> u64 {
    let items = u128::from(memory_bytes) * 9 / 640;
    u64::try_from(items / 32 * 32).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The products the issue asks for, by the NVML names they must cover.
    const EXPECTED: [(&str, &str); 14] = [
        ("h100-sxm", "NVIDIA H100 80GB HBM3"),
        ("h100-pcie", "NVIDIA H100 PCIe"),
        ("h100-nvl", "NVIDIA H100 NVL"),
        ("h200", "NVIDIA H200"),
        ("gh200", "NVIDIA GH200 480GB"),
        ("h800", "NVIDIA H800"),
        ("a100-sxm-40gb", "NVIDIA A100-SXM4-40GB"),
        ("a100-sxm-80gb", "NVIDIA A100-SXM4-80GB"),
        ("a100-pcie-40gb", "NVIDIA A100-PCIE-40GB"),
        ("a100-pcie-80gb", "NVIDIA A100 80GB PCIe"),
        ("l40s", "NVIDIA L40S"),
        ("rtx-4090", "NVIDIA GeForce RTX 4090"),
        ("rtx-5090", "NVIDIA GeForce RTX 5090"),
        ("b200", "NVIDIA B200"),
    ];

    #[test]
    fn the_builtin_table_follows_the_formulas_of_gpow_md() {
        let file = ProfilesFile::builtin().unwrap();
        assert_eq!(file.profiles.len(), EXPECTED.len());
        for p in &file.profiles {
            let w = p.work;
            assert_eq!((w.m, w.n, w.k), (PRODUCTION_DIM, PRODUCTION_DIM, PRODUCTION_K), "{}", p.id);
            assert_eq!(w.count, production_count(p.int8_dense_tops), "{} count", p.id);
            assert_eq!(w.items, production_items(p.memory_bytes), "{} items", p.id);
            // 1.4 s at peak, within the rounding to 160 products.
            let seconds = w.ops() as f64 / (f64::from(p.int8_dense_tops) * 1e12);
            assert!((1.3..1.5).contains(&seconds), "{}: {seconds} s at peak", p.id);
            let e = p.estimated();
            assert_eq!(p.time.phase_a, TimeReference::Estimated { ms: e.phase_a_ms }, "{} phase A", p.id);
            assert_eq!(p.time.build, TimeReference::Estimated { ms: e.build_ms }, "{} build", p.id);
            assert_eq!(p.time.walk, TimeReference::Estimated { ms: e.walk_ms }, "{} walk", p.id);
        }
        for (id, name) in EXPECTED {
            assert_eq!(file.lookup(name).map(|p| p.id.as_str()), Some(id));
        }
    }

    #[test]
    fn gpow_md_figures() {
        // 1.10·10¹² operations a product; the counts GPOW.md names.
        assert_eq!(2 * 4096u64 * 4096 * 32768, 1_099_511_627_776);
        assert_eq!([1979, 1513, 624, 660].map(production_count), [2560, 1920, 800, 800]);
        // An 80 GiB card: 0.9 · 2^36·1.25 / 64.
        assert_eq!(production_items(80 << 30), 1_207_959_552);
        assert_eq!(production_items(u64::MAX) % 32, 0);
        let h100 = ProfilesFile::builtin().unwrap().lookup("NVIDIA H100 80GB HBM3").cloned().unwrap();
        // 2560 products · 1.0995e12 / (1979e12 · 0.6) = 2.3707 s.
        assert_eq!(h100.estimated().phase_a_ms, 2371);
        // GPOW.md's peaks and bandwidths, where it gives them.
        let file = ProfilesFile::builtin().unwrap();
        let figures = |id: &str| {
            let p = file.profiles.iter().find(|p| p.id == id).unwrap();
            (p.int8_dense_tops, p.memory_bandwidth_gb_s)
        };
        assert_eq!(figures("h100-sxm"), (1979, 3350));
        assert_eq!(figures("h200"), (1979, 4800));
        assert_eq!(figures("h100-pcie").0, 1513);
        assert_eq!(figures("a100-sxm-80gb"), (624, 2000));
        for id in ["a100-sxm-40gb", "a100-pcie-40gb", "a100-pcie-80gb"] {
            assert_eq!(figures(id).0, 624, "{id}");
        }
        assert_eq!(figures("rtx-4090").0, 660);
    }

    #[test]
    fn names_match_exactly_never_by_substring() {
        let file = ProfilesFile::builtin().unwrap();
        for name in
            ["NVIDIA H100", "H100", "NVIDIA H100 80GB HBM3 ", "nvidia h200", "NVIDIA RTX A1000", "NVIDIA GH200", ""]
        {
            assert!(file.lookup(name).is_none(), "{name:?}");
        }
        assert_eq!(file.lookup("NVIDIA H200").map(|p| p.id.as_str()), Some("h200"));
        assert_eq!(file.lookup("NVIDIA GH200 480GB").map(|p| p.id.as_str()), Some("gh200"));
    }

    fn edited(edit: impl FnOnce(&mut ProfilesFile)) -> String {
        let mut file = ProfilesFile::builtin().unwrap();
        edit(&mut file);
        let text = serde_json::to_string(&file).unwrap();
        ProfilesFile::parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let cases: Vec<(String, &str)> = vec![
            (edited(|f| f.schema_version = 2), "schema_version = 2"),
            (edited(|f| f.profiles.clear()), "profiles: the file has none"),
            (edited(|f| f.profiles[1].id = "h100-sxm".into()), "profiles[1].id = `h100-sxm`"),
            (edited(|f| f.profiles[0].id = "H100".into()), "profiles[0].id = `H100`"),
            (
                edited(|f| f.profiles[3].nvml_names.push("NVIDIA H100 NVL".into())),
                "profiles[3].nvml_names: `NVIDIA H100 NVL` already names profile `h100-nvl`",
            ),
            (edited(|f| f.profiles[2].nvml_names.push("NVIDIA H100 NVL".into())), "already names profile `h100-nvl`"),
            (edited(|f| f.profiles[2].nvml_names.push(" ".into())), "profiles[2].nvml_names: an empty name"),
            (edited(|f| f.profiles[2].nvml_names.clear()), "profiles[2].nvml_names: a profile covers"),
            (
                edited(|f| f.profiles[3].memory_bandwidth_gb_s = 0),
                "profiles[3].memory_bandwidth_gb_s: must be greater than 0",
            ),
            (edited(|f| f.profiles[4].work.k = 100), "profiles[4].work: gpus[0].k = 100"),
            (edited(|f| f.profiles[4].work.items = 0), "profiles[4].work.items = 0"),
            (
                edited(|f| f.profiles[5].time.walk = TimeReference::Estimated { ms: 0 }),
                "profiles[5].time.walk: ms must be",
            ),
            (
                edited(|f| {
                    f.profiles[6].time.build = TimeReference::Measured {
                        ms: 900,
                        runs: 19,
                        date: "2026-12-01".into(),
                        driver: "570.86".into(),
                    }
                }),
                "profiles[6].time.build: runs = 19",
            ),
            (
                edited(|f| {
                    f.profiles[6].time.build =
                        TimeReference::Measured { ms: 900, runs: 25, date: "2026-12-01".into(), driver: " ".into() }
                }),
                "names its date and driver",
            ),
        ];
        for (error, expected) in cases {
            assert!(error.contains(expected), "{error:?} should contain {expected:?}");
        }
        let unknown = BUILTIN.replacen("\"int8_dense_tops\"", "\"extra\": 1, \"int8_dense_tops\"", 1);
        assert!(ProfilesFile::parse(&unknown).unwrap_err().to_string().contains("unknown field `extra`"));
        let unknown = BUILTIN.replacen(
            "\"kind\": \"estimated\", \"ms\": 2371",
            "\"kind\": \"estimated\", \"ms\": 2371, \"x\": 1",
            1,
        );
        assert!(ProfilesFile::parse(&unknown).unwrap_err().to_string().contains("unknown field `x`"));
        let kind = BUILTIN.replacen("\"kind\": \"estimated\"", "\"kind\": \"guessed\"", 1);
        assert!(ProfilesFile::parse(&kind).unwrap_err().to_string().contains("guessed"));
        // A measured reference that says how it was measured is accepted.
        let mut file = ProfilesFile::builtin().unwrap();
        file.profiles[0].time.phase_a =
            TimeReference::Measured { ms: 2100, runs: 21, date: "2026-12-01".into(), driver: "570.86.15".into() };
        let back = ProfilesFile::parse(&serde_json::to_string(&file).unwrap()).unwrap();
        assert!(back.profiles[0].time.phase_a.is_measured());
    }

    #[test]
    fn files_are_read_with_a_size_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.json");
        std::fs::write(&path, BUILTIN).unwrap();
        assert_eq!(ProfilesFile::load(&path).unwrap(), ProfilesFile::builtin().unwrap());
        std::fs::write(&path, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(ProfilesFile::load(&path).unwrap_err().to_string().contains("larger than any profiles file"));
        assert!(ProfilesFile::load(&dir.path().join("absent.json")).unwrap_err().to_string().contains("absent.json"));
    }
}
