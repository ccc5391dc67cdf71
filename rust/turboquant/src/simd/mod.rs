//! Runtime SIMD dispatch.
//!
//! Each kernel is written once as a plain Rust body and compiled several times: under
//! `#[target_feature(enable = "avx512…")]`, under `avx2,fma`, and as portable scalar code
//! (on aarch64 NEON is part of the baseline, so the portable build already uses it).
//! A safe dispatcher picks the best version the running CPU supports; shipped builds never
//! use `target-cpu=native`. Because the versions share one body and Rust never reorders or
//! contracts float operations, every SIMD path is bit-exact with the scalar path; the parity
//! tests in `tests/simd_parity.rs` hold them to that.
//!
//! Set `TURBOQUANT_SIMD=scalar|avx2|avx512` to cap the level (for tests and comparisons), and
//! `TURBOQUANT_AVX512=bw|bw-vnni|vbmi` to cap the AVX-512 search-kernel family
//! (`search::fastscan::Avx512Kernels`).

pub mod kernels;
pub mod lanes;
pub mod transpose;

use std::sync::OnceLock;

/// An instruction-set level a kernel can run at. Ordered: a higher level implies the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable code (NEON on aarch64, SSE2 on x86-64).
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL.
    Avx512,
}

impl SimdLevel {
    /// Lower-case name, as accepted by `TURBOQUANT_SIMD`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Every level this CPU can run, lowest first.
    pub fn available() -> Vec<SimdLevel> {
        [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|&l| l <= hardware_level())
            .collect()
    }

    /// Clamps a requested level to what the CPU supports, so that dispatch is always safe.
    pub fn supported(self) -> SimdLevel {
        self.min(hardware_level())
    }
}

/// The best level of this CPU, ignoring `TURBOQUANT_SIMD`.
pub fn hardware_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return SimdLevel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Scalar
    })
}

/// The level kernels run at by default: the hardware level, capped by `TURBOQUANT_SIMD`.
pub fn active_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("TURBOQUANT_SIMD").ok().as_deref() {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") => SimdLevel::Avx2,
            _ => SimdLevel::Avx512,
        };
        cap.supported()
    })
}

/// Defines `pub fn $name(level: SimdLevel, args…)`: one body, compiled per level, dispatched safely.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name(level: $crate::simd::SimdLevel, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }

            match level.supported() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `supported()` never returns a level above what the CPU reported.
                $crate::simd::SimdLevel::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above, AVX2 and FMA were detected at run time.
                $crate::simd::SimdLevel::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;
