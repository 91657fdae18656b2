//! The instruction sets GPoW-2's hot loops are compiled for (tile recomputation, dataset items,
//! lane replay), chosen at run time. `Scalar` is portable and is the reference: every other
//! path is tested against it bit for bit. A path is only entered after
//! `is_x86_feature_detected!` has confirmed its features on this CPU, at the call itself: a
//! caller naming an unavailable `Isa` gets the scalar path, never an illegal instruction.

use serde::Serialize;

/// A code path for the hot loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isa {
    /// Portable Rust, one block or item at a time: the reference.
    Scalar,
    /// x86-64 AVX2: 8 lanes of 32 bits (Philox, SHA-256, walk), `vpmaddwd` for the GEMM.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/DQ with VNNI: 16 lanes, `vpdpbusd` for the GEMM.
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => has_avx2(),
            Isa::Avx512 => has_avx512(),
        }
    }

    /// The fastest path this CPU runs.
    pub fn best() -> Isa {
        Isa::ALL.into_iter().rev().find(|i| i.available()).unwrap_or(Isa::Scalar)
    }

    /// Every path this CPU runs, the reference first.
    pub fn all_available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// `scalar`, `avx2`, `avx512`, or `auto` for [`Isa::best`]; an unavailable path is an
    /// error naming it.
    pub fn parse(text: &str) -> Result<Isa, IsaError> {
        let isa = match text {
            "auto" => return Ok(Isa::best()),
            "scalar" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx512" => Isa::Avx512,
            other => return Err(IsaError::Unknown(other.to_string())),
        };
        if !isa.available() {
            return Err(IsaError::Unavailable(isa.name()));
        }
        Ok(isa)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    #[error("isa = `{0}`: expected auto, scalar, avx2 or avx512")]
    Unknown(String),
    #[error("isa = {0}: this CPU does not have it")]
    Unavailable(&'static str),
}

/// AVX2 on this CPU.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Every feature the AVX-512 path is compiled with.
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && has_avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_is_always_there_and_names_round_trip() {
        assert!(Isa::Scalar.available());
        assert_eq!(Isa::all_available()[0], Isa::Scalar);
        assert!(Isa::best().available());
        for isa in Isa::all_available() {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert_eq!(Isa::parse("auto"), Ok(Isa::best()));
        assert_eq!(Isa::parse("sse9"), Err(IsaError::Unknown("sse9".into())));
    }
}
