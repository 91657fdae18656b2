//! `cargo xtask ptx [--check]` (check: compare and run ptxas): compiles `crates/gpu-attestor/kernels/*.cu` to PTX with NVRTC
//! and writes `ptx/<name>.ptx`, checked in and embedded into gpu-attestor at build time, so no
//! build machine needs CUDA.
//!
//! NVRTC comes from the pinned Python wheel `nvidia-cuda-nvrtc-cu12` that `make setup` installs
//! into `.venv` (tests/python/requirements.txt); the same version and options give the same
//! bytes, which `--check` (and the test below) confirms. The first line of each PTX file is the
//! SHA-256 of its source, so a test without NVRTC still sees a kernel changed without its PTX.
//! `ptxas` from the pinned `nvidia-cuda-nvcc-cu12` wheel validates the PTX for every target the
//! backend loads it on (the tests): a warning (a register spill among them) or a notice that
//! wgmma instructions are serialised or waited for early (`(C75..)`: C7515, C7517) fails the
//! check, since both cost the GEMMs their speed.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, bail};
use common::process::{CapturedOutput, ProcessSpec};
use sha2::{Digest, Sha256};

/// NVRTC's version: the wheel's, pinned in tests/python/requirements.txt.
pub(crate) const NVRTC_VERSION: (i32, i32) = (12, 8);

/// A kernel source and its PTX: the source under crates/gpu-attestor/kernels, the target.
pub(crate) struct Unit {
    pub(crate) source: &'static str,
    pub(crate) ptx: &'static str,
    pub(crate) arch: &'static str,
    /// The targets `ptxas` checks it for: every GPU the backend loads it on.
    pub(crate) ptxas: &'static [&'static str],
    /// The target its checked-in cubin (`ptx/<cubin>`) is assembled for, and that file: what the
    /// backend loads on those GPUs instead of having the driver compile the PTX at every start.
    pub(crate) cubin: (&'static str, &'static str),
}

/// What `cargo xtask ptx` makes. compute_80 runs on every GPU from the A100 on (the driver
/// compiles the PTX for the GPU it loads on); compute_90a adds wgmma, for 9.0 alone.
pub(crate) const UNITS: [Unit; 2] = [
    Unit {
        source: "gpow2.cu",
        ptx: "gpow2.ptx",
        arch: "compute_80",
        ptxas: &["sm_80", "sm_90", "sm_90a"],
        cubin: ("sm_80", "gpow2.sm_80.cubin"),
    },
    Unit {
        source: "gpow2.cu",
        ptx: "gpow2.sm_90a.ptx",
        arch: "compute_90a",
        ptxas: &["sm_90a"],
        cubin: ("sm_90a", "gpow2.sm_90a.cubin"),
    },
];

/// `ptx/cubins.txt`: which PTX each cubin was assembled from, so a test without ptxas still sees
/// a cubin left behind its PTX.
pub(crate) const CUBINS: &str = "cubins.txt";

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace above xtask").to_path_buf()
}

/// `// <source> sha256 <hex>`: the first line of the PTX of `source` (its bytes as they are).
pub(crate) fn header(source_name: &str, source: &[u8]) -> String {
    format!("// {source_name} sha256 {}\n", hex(&Sha256::digest(source)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory of an `nvidia.<package>` wheel in the test virtualenv (`TEST_PYTHON`, else
/// `.venv/bin/python`), or why not.
pub(crate) fn nvidia_package(package: &str) -> anyhow::Result<PathBuf> {
    let python =
        std::env::var_os("TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/python"));
    let out = output(
        ProcessSpec::new(&python).args(["-c", &format!("import nvidia.{package} as m; print(list(m.__path__)[0])")]),
    )
    .with_context(|| format!("running {} (make setup makes the virtualenv)", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} has no nvidia.{package} (the pinned wheel in tests/python/requirements.txt; make setup installs it): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs `spec` to its end (a minute at most), output captured.
pub(crate) fn output(spec: ProcessSpec) -> anyhow::Result<CapturedOutput> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(spec.output(Duration::from_secs(60), 1 << 20))?)
}

type Program = *mut std::ffi::c_void;

/// NVRTC, loaded from the wheel.
struct Nvrtc {
    lib: libloading::Library,
    // Kept loaded: libnvrtc finds its builtins by soname.
    _builtins: libloading::Library,
}

impl Nvrtc {
    fn load() -> anyhow::Result<Self> {
        let dir = nvidia_package("cuda_nvrtc")?.join("lib");
        // SAFETY: NVIDIA's libraries from the pinned wheel; loading runs their initialisers,
        // which set up nothing of ours.
        #[allow(unsafe_code)]
        let (builtins, lib) = unsafe {
            let builtins = libloading::os::unix::Library::open(
                Some(dir.join(format!("libnvrtc-builtins.so.{}.{}", NVRTC_VERSION.0, NVRTC_VERSION.1))),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
            .with_context(|| format!("loading NVRTC's builtins from {}", dir.display()))?;
            let lib = libloading::Library::new(dir.join(format!("libnvrtc.so.{}", NVRTC_VERSION.0)))
                .with_context(|| format!("loading NVRTC from {}", dir.display()))?;
            (libloading::Library::from(builtins), lib)
        };
        let nvrtc = Self { lib, _builtins: builtins };
        let version = nvrtc.version()?;
        if version != NVRTC_VERSION {
            bail!(
                "NVRTC {}.{} found; the PTX is made with {}.{} (the pinned wheel)",
                version.0,
                version.1,
                NVRTC_VERSION.0,
                NVRTC_VERSION.1
            );
        }
        Ok(nvrtc)
    }

    fn symbol<T: Copy>(&self, name: &str) -> anyhow::Result<T> {
        // SAFETY: each caller names the symbol with its C signature from nvrtc.h.
        #[allow(unsafe_code)]
        unsafe {
            Ok(*self.lib.get::<T>(name.as_bytes()).with_context(|| format!("NVRTC has no {name}"))?)
        }
    }

    fn check(&self, call: &str, code: c_int) -> anyhow::Result<()> {
        if code == 0 {
            return Ok(());
        }
        let text: unsafe extern "C" fn(c_int) -> *const c_char = self.symbol("nvrtcGetErrorString")?;
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
        #[allow(unsafe_code)]
        let message = unsafe { CStr::from_ptr(text(code)) }.to_string_lossy().into_owned();
        bail!("{call}: {message}")
    }

    fn version(&self) -> anyhow::Result<(i32, i32)> {
        let f: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int = self.symbol("nvrtcVersion")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two out-parameters.
        #[allow(unsafe_code)]
        let code = unsafe { f(&mut major, &mut minor) };
        self.check("nvrtcVersion", code)?;
        Ok((major, minor))
    }

    /// PTX of `source` (named `name` in messages) for `arch`.
    fn compile(&self, name: &str, source: &str, arch: &str) -> anyhow::Result<String> {
        type Create = unsafe extern "C" fn(
            *mut Program,
            *const c_char,
            *const c_char,
            c_int,
            *const *const c_char,
            *const *const c_char,
        ) -> c_int;
        type Compile = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
        type Size = unsafe extern "C" fn(Program, *mut usize) -> c_int;
        type Get = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
        type Destroy = unsafe extern "C" fn(*mut Program) -> c_int;
        let create: Create = self.symbol("nvrtcCreateProgram")?;
        let compile: Compile = self.symbol("nvrtcCompileProgram")?;
        let (log_size, get_log): (Size, Get) =
            (self.symbol("nvrtcGetProgramLogSize")?, self.symbol("nvrtcGetProgramLog")?);
        let (ptx_size, get_ptx): (Size, Get) = (self.symbol("nvrtcGetPTXSize")?, self.symbol("nvrtcGetPTX")?);
        let destroy: Destroy = self.symbol("nvrtcDestroyProgram")?;
        let c_source = CString::new(source).context("the source has a NUL byte")?;
        let c_name = CString::new(name)?;
        let options: Vec<CString> = [format!("--gpu-architecture={arch}"), "--std=c++17".into()]
            .into_iter()
            .map(|o| CString::new(o).expect("no NUL in options"))
            .collect();
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut program: Program = std::ptr::null_mut();
        // SAFETY: NVRTC's C API as nvrtc.h declares it; every pointer passed lives until the
        // call returns, and the buffers read back are sized by NVRTC first.
        #[allow(unsafe_code)]
        unsafe {
            self.check(
                "nvrtcCreateProgram",
                create(&mut program, c_source.as_ptr(), c_name.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
            )?;
            let compiled = compile(program, option_ptrs.len() as c_int, option_ptrs.as_ptr());
            let read = |size: Size, get: Get| -> anyhow::Result<String> {
                let mut n = 0usize;
                self.check("nvrtcGet…Size", size(program, &mut n))?;
                let mut buf = vec![0u8; n.max(1)];
                self.check("nvrtcGet…", get(program, buf.as_mut_ptr().cast()))?;
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
            };
            let result = if compiled == 0 {
                read(ptx_size, get_ptx)
            } else {
                let log = read(log_size, get_log).unwrap_or_default();
                self.check("nvrtcCompileProgram", compiled)
                    .map(|_| String::new())
                    .with_context(|| format!("{name}:\n{log}"))
            };
            destroy(&mut program);
            result
        }
    }
}

/// The PTX file's whole text for `unit`: the source hash, then NVRTC's output.
pub(crate) fn make(unit: &Unit) -> anyhow::Result<String> {
    let path = workspace().join("crates/gpu-attestor/kernels").join(unit.source);
    let source = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(source.clone()).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let nvrtc = Nvrtc::load()?;
    let ptx = nvrtc.compile(unit.source, &text, unit.arch)?;
    Ok(format!("{}{ptx}", header(unit.source, &source)))
}

/// `ptxas` on the checked-in PTX of `unit` for `target`: the cubin, or why not (any warning or
/// wgmma notice included).
fn assemble(unit: &Unit, target: &str) -> anyhow::Result<Vec<u8>> {
    let ptxas = nvidia_package("cuda_nvcc")?.join("bin/ptxas");
    let out_dir = tempfile::tempdir()?;
    let cubin = out_dir.path().join(format!("{}.{target}.cubin", unit.ptx));
    let out = output(
        ProcessSpec::new(&ptxas)
            .arg(format!("--gpu-name={target}"))
            .arg("--warn-on-spills")
            .arg("--warning-as-error")
            .arg("-o")
            .arg(&cubin)
            .arg(workspace().join("ptx").join(unit.ptx)),
    )?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || said.contains("(C75") {
        bail!("ptxas --gpu-name={target} ptx/{}:\n{said}", unit.ptx);
    }
    Ok(std::fs::read(&cubin)?)
}

/// Runs `ptxas` on the checked-in PTX of `unit` for every target it is loaded on; the cubin it
/// made for the unit's cubin target (one of those).
pub(crate) fn validate(unit: &Unit) -> anyhow::Result<Vec<u8>> {
    let mut cubin = None;
    for target in unit.ptxas {
        let made = assemble(unit, target)?;
        if *target == unit.cubin.0 {
            cubin = Some(made);
        }
    }
    cubin.with_context(|| {
        format!("ptx/{}: its cubin's target {} is not among its ptxas targets", unit.ptx, unit.cubin.0)
    })
}

/// The line of `ptx/cubins.txt` for `unit`: `<cubin> <target> <ptx> sha256 <hex of the PTX>`.
fn cubin_line(unit: &Unit) -> anyhow::Result<String> {
    let ptx = std::fs::read(workspace().join("ptx").join(unit.ptx))?;
    Ok(format!("{} {} {} sha256 {}", unit.cubin.1, unit.cubin.0, unit.ptx, hex(&Sha256::digest(ptx))))
}

/// `ptx/cubins.txt` as the checked-in PTX makes it.
fn cubins_text() -> anyhow::Result<String> {
    let mut text =
        String::from("# cubin, target, the PTX it was assembled from (cargo xtask ptx; ptxas of the pinned wheel)\n");
    for unit in &UNITS {
        text.push_str(&cubin_line(unit)?);
        text.push('\n');
    }
    Ok(text)
}

/// `cargo xtask ptx [--check]`.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => bail!("usage: cargo xtask ptx [--check]"),
    };
    for unit in &UNITS {
        let text = make(unit)?;
        let out = workspace().join("ptx").join(unit.ptx);
        if check {
            let current = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
            if current != text {
                bail!("{} is not what NVRTC makes of kernels/{}: run `cargo xtask ptx`", out.display(), unit.source);
            }
            let made = validate(unit)?;
            let name = unit.cubin.1;
            let cubin = workspace().join("ptx").join(name);
            if std::fs::read(&cubin).ok() != Some(made) {
                bail!("{} is not what ptxas makes of ptx/{}: run `cargo xtask ptx`", cubin.display(), unit.ptx);
            }
            println!("ptx/{}: up to date; ptxas accepts it for {}; ptx/{name} is its", unit.ptx, unit.ptxas.join(", "));
        } else {
            std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
            let (target, name) = unit.cubin;
            let cubin = assemble(unit, target)?;
            std::fs::write(workspace().join("ptx").join(name), &cubin)
                .with_context(|| format!("writing ptx/{name}"))?;
            println!(
                "ptx/{}: {} lines from kernels/{} ({}); ptx/{name}: {} bytes",
                unit.ptx,
                text.lines().count(),
                unit.source,
                unit.arch,
                cubin.len()
            );
        }
    }
    let list = workspace().join("ptx").join(CUBINS);
    let text = cubins_text()?;
    if check {
        if std::fs::read_to_string(&list).ok().as_deref() != Some(text.as_str()) {
            bail!("{} does not list the cubins of the PTX as it is: run `cargo xtask ptx`", list.display());
        }
    } else {
        std::fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in PTX is what the pinned NVRTC makes of the source now: reproducible, and
    /// never stale.
    #[test]
    fn the_checked_in_ptx_is_what_nvrtc_makes_of_the_source() {
        let nvrtc = nvidia_package("cuda_nvrtc");
        if !e2e::require_tool("NVRTC (the nvidia-cuda-nvrtc-cu12 wheel)", nvrtc.is_ok()) {
            return;
        }
        for unit in &UNITS {
            let made = make(unit).unwrap();
            let current = std::fs::read_to_string(workspace().join("ptx").join(unit.ptx)).unwrap();
            assert!(made == current, "ptx/{} is stale: run `cargo xtask ptx`", unit.ptx);
        }
    }

    /// ptxas accepts every PTX file for every target the backend loads it on, and the
    /// checked-in cubins are what it makes of the PTX (ptxas's output is the same bytes every
    /// time), listed as such.
    #[test]
    fn ptxas_accepts_the_ptx_for_every_target_and_made_the_cubins() {
        let nvcc = nvidia_package("cuda_nvcc");
        if !e2e::require_tool("ptxas (the nvidia-cuda-nvcc-cu12 wheel)", nvcc.is_ok()) {
            return;
        }
        for unit in &UNITS {
            let made = validate(unit).unwrap();
            let name = unit.cubin.1;
            let current = std::fs::read(workspace().join("ptx").join(name)).unwrap();
            assert!(current == made, "ptx/{name} is stale: run `cargo xtask ptx`");
        }
        let list = std::fs::read_to_string(workspace().join("ptx").join(CUBINS)).unwrap();
        assert_eq!(list, cubins_text().unwrap(), "ptx/{CUBINS} is stale: run `cargo xtask ptx`");
    }
}
