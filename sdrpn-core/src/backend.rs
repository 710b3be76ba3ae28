//! The one module that names concrete backends.
//!
//! Everything else is generic over `B: Backend`; a command picks a backend at
//! run time with a [`DeviceSpec`] and hands a [`BackendJob`] to [`run_on`],
//! which monomorphises the job for each backend compiled in.
//!
//! Cargo features (forwarded from `experiments`): `ndarray`, `flex` (CPU),
//! `wgpu` (Vulkan/Metal/DX12), `cuda`.

use crate::error::{CoreError, Result};
use burn::tensor::backend::Backend;
use std::fmt;
use std::str::FromStr;

/// The CPU backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuKind {
    /// `burn-ndarray` with SIMD and threads.
    NdArray,
    /// `burn-flex`, Burn's newer pure-Rust CPU backend.
    Flex,
}

/// The CPU backend used by `--device cpu`: flex, the faster of the two on
/// a transformer forward pass (2.3x ndarray in release on 2 cores, see
/// BENCHMARKS.md), unless only ndarray is compiled in.
pub const DEFAULT_CPU: CpuKind = if cfg!(feature = "flex") {
    CpuKind::Flex
} else {
    CpuKind::NdArray
};

/// A device asked for on the command line:
/// `cpu`, `cpu:ndarray`, `cpu:flex`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A CPU backend (the default one when `None`).
    Cpu(Option<CpuKind>),
    /// The WGPU backend: the default adapter, or the N-th discrete GPU.
    Wgpu(Option<usize>),
    /// The CUDA backend on GPU N.
    Cuda(usize),
}

impl DeviceSpec {
    /// The environment variable that makes a missing device of this kind a
    /// failure of the checks that need it: `SDRPN_REQUIRE_CUDA` for CUDA,
    /// `SDRPN_REQUIRE_WGPU` otherwise.
    pub fn require_variable(&self) -> &'static str {
        match self {
            DeviceSpec::Cuda(_) => "SDRPN_REQUIRE_CUDA",
            _ => "SDRPN_REQUIRE_WGPU",
        }
    }
}

impl Default for DeviceSpec {
    fn default() -> Self {
        DeviceSpec::Cpu(None)
    }
}

impl FromStr for DeviceSpec {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, arg) = match lower.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (lower.as_str(), None),
        };
        let index = |a: &str| {
            a.parse::<usize>().map_err(|_| {
                CoreError::Device(format!("invalid device {s:?}: {a:?} is not a device index"))
            })
        };
        match (name, arg) {
            ("cpu", None) => Ok(DeviceSpec::Cpu(None)),
            ("cpu", Some("ndarray")) => Ok(DeviceSpec::Cpu(Some(CpuKind::NdArray))),
            ("cpu", Some("flex")) => Ok(DeviceSpec::Cpu(Some(CpuKind::Flex))),
            ("wgpu", None) => Ok(DeviceSpec::Wgpu(None)),
            ("wgpu", Some(a)) => Ok(DeviceSpec::Wgpu(Some(index(a)?))),
            ("cuda", None) => Ok(DeviceSpec::Cuda(0)),
            ("cuda", Some(a)) => Ok(DeviceSpec::Cuda(index(a)?)),
            _ => Err(CoreError::Device(format!(
                "unknown device {s:?}: use cpu, cpu:ndarray, cpu:flex, wgpu, wgpu:N, cuda or cuda:N"
            ))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            DeviceSpec::Cpu(None) => "cpu".to_string(),
            DeviceSpec::Cpu(Some(CpuKind::NdArray)) => "cpu:ndarray".to_string(),
            DeviceSpec::Cpu(Some(CpuKind::Flex)) => "cpu:flex".to_string(),
            DeviceSpec::Wgpu(None) => "wgpu".to_string(),
            DeviceSpec::Wgpu(Some(i)) => format!("wgpu:{i}"),
            DeviceSpec::Cuda(i) => format!("cuda:{i}"),
        };
        f.pad(&text)
    }
}

/// Work that can run on any backend. [`run_on`] calls `run` with the
/// backend and device the user asked for.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Names of the backends compiled into this build.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "ndarray") {
        v.push("cpu:ndarray");
    }
    if cfg!(feature = "flex") {
        v.push("cpu:flex");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

#[allow(dead_code)] // unused when every backend is compiled in
fn not_compiled(spec: &DeviceSpec, feature: &str) -> CoreError {
    CoreError::Device(format!(
        "device {spec} needs the `{feature}` cargo feature, which this build lacks (compiled in: {}); rebuild with `--features {feature}`",
        compiled_backends().join(", ")
    ))
}

/// The float precision models compute in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats (CPU backends support only this).
    #[default]
    F32,
    /// IEEE half precision (GPU backends).
    F16,
    /// bfloat16 (CUDA; not on lavapipe).
    Bf16,
}

impl FromStr for Precision {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "f16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(CoreError::Device(format!(
                "unknown precision {other:?}: use f32, f16 or bf16"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Runs `job` on the backend and device named by `spec`, in f32.
///
/// Fails with a clear error when the backend was not compiled in, when no
/// WGPU adapter exists, or when the CUDA driver cannot be loaded or has no
/// GPU of that index.
pub fn run_on<J: BackendJob>(spec: &DeviceSpec, job: J) -> Result<J::Output> {
    run_on_with(spec, Precision::F32, job)
}

/// Like [`run_on`], with every float tensor created on the device in
/// `precision` (an error names the device when it lacks that dtype).
pub fn run_on_with<J: BackendJob>(
    spec: &DeviceSpec,
    precision: Precision,
    job: J,
) -> Result<J::Output> {
    match *spec {
        DeviceSpec::Cpu(_) if precision != Precision::F32 => Err(CoreError::Device(format!(
            "the CPU backends compute in f32 only; {precision} needs --device wgpu or cuda"
        ))),
        DeviceSpec::Cpu(kind) => match kind.unwrap_or(DEFAULT_CPU) {
            CpuKind::NdArray => {
                #[cfg(feature = "ndarray")]
                let out = start::<burn::backend::NdArray, J>(
                    Default::default(),
                    spec,
                    precision,
                    None,
                    job,
                );
                #[cfg(not(feature = "ndarray"))]
                let out = Err(not_compiled(spec, "ndarray"));
                out
            }
            CpuKind::Flex => {
                #[cfg(feature = "flex")]
                let out =
                    start::<burn::backend::Flex, J>(Default::default(), spec, precision, None, job);
                #[cfg(not(feature = "flex"))]
                let out = Err(not_compiled(spec, "flex"));
                out
            }
        },
        DeviceSpec::Wgpu(index) => {
            #[cfg(feature = "wgpu")]
            let out = {
                use burn::backend::wgpu::WgpuDevice;
                let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
                let hint = "no WGPU adapter could be started (on Linux install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers libvulkan1`)";
                start::<burn::backend::Wgpu, J>(device, spec, precision, Some(hint), job)
            };
            #[cfg(not(feature = "wgpu"))]
            let out = {
                let _ = index;
                Err(not_compiled(spec, "wgpu"))
            };
            out
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            let out = cuda_driver::check(index).and_then(|()| {
                let device = burn::backend::cuda::CudaDevice::new(index);
                let hint = "the CUDA runtime did not start on this GPU";
                start::<burn::backend::Cuda, J>(device, spec, precision, Some(hint), job)
            });
            #[cfg(not(feature = "cuda"))]
            let out = {
                let _ = index;
                Err(not_compiled(spec, "cuda"))
            };
            out
        }
    }
}

/// For checks that need a GPU: runs `job` like [`run_on_with`], and when the
/// device is unusable says why on stderr and returns `Ok(None)`, unless the
/// device's [`DeviceSpec::require_variable`] is set to `1`, which makes that
/// an error instead (CI sets `SDRPN_REQUIRE_WGPU=1`).
pub fn run_on_unless_missing<J: BackendJob>(
    spec: &DeviceSpec,
    precision: Precision,
    job: J,
) -> Result<Option<J::Output>> {
    let require = spec.require_variable();
    match run_on_with(spec, precision, job) {
        Ok(out) => Ok(Some(out)),
        Err(e) if std::env::var(require).as_deref() != Ok("1") => {
            eprintln!("skipping the check on {spec} ({precision}): {e}");
            Ok(None)
        }
        Err(e) => Err(CoreError::Device(format!(
            "{spec} is required ({require}=1) but unusable: {e}"
        ))),
    }
}

/// Starts the device, sets its float dtype, checks it computes, and runs the
/// job.
///
/// The order matters: on a machine without a GPU driver a cubecl backend
/// panics (on a background thread, then with a `RecvError` here) the first
/// time anything touches the device, and setting a dtype does. So the
/// device's runtime is started first, alone and with the panic caught, before
/// any dtype is set or tensor is built; a failure there is the same clear
/// error in every precision.
#[allow(dead_code)]
fn start<B: Backend, J: BackendJob>(
    device: B::Device,
    spec: &DeviceSpec,
    precision: Precision,
    probe_hint: Option<&str>,
    job: J,
) -> Result<J::Output> {
    prepare::<B>(&device, spec, precision, probe_hint)?;
    Ok(job.run::<B>(device))
}

/// Starts `device` (see [`start`]), sets its float dtype and probes it.
#[allow(dead_code)]
fn prepare<B: Backend>(
    device: &B::Device,
    spec: &DeviceSpec,
    precision: Precision,
    probe_hint: Option<&str>,
) -> Result<()> {
    use burn::tensor::{DType, FloatDType};
    if let Some(hint) = probe_hint {
        // `supports_dtype` starts the runtime (adapter, driver) but leaves
        // the device's dtype settings untouched.
        let probe_device = device.clone();
        catch_backend_panic(spec, hint, move || {
            B::supports_dtype(&probe_device, DType::F32)
        })?;
    }
    let dtype = match precision {
        Precision::F32 => None,
        Precision::F16 => Some(FloatDType::F16),
        Precision::Bf16 => Some(FloatDType::BF16),
    };
    if let Some(dtype) = dtype {
        if !B::supports_dtype(device, DType::from(dtype)) {
            return Err(CoreError::Device(format!(
                "device {spec} ({}) cannot compute in {precision}: its adapter does not support that dtype; use --dtype f32{}",
                B::name(device),
                if precision == Precision::Bf16 { " or f16" } else { "" }
            )));
        }
        // The backend's own int dtype; asking the device for its settings
        // would initialise them and make this call fail.
        let int_dtype =
            burn::tensor::IntDType::from(<B::IntElem as burn::tensor::Element>::dtype());
        burn::tensor::set_default_dtypes::<B>(device, dtype, int_dtype).map_err(|e| {
            CoreError::Device(format!("device {spec} cannot compute in {precision}: {e}"))
        })?;
    }
    if let Some(hint) = probe_hint {
        probe::<B>(device, spec, precision, hint)?;
    }
    Ok(())
}

/// Runs a tiny computation on `device` in its default dtype and checks the
/// result, turning a panic inside the backend into an error.
#[allow(dead_code)]
fn probe<B: Backend>(
    device: &B::Device,
    spec: &DeviceSpec,
    precision: Precision,
    hint: &str,
) -> Result<()> {
    let device = device.clone();
    let correct = catch_backend_panic(spec, hint, move || {
        crate::readback::floats(burn::tensor::Tensor::<B, 1>::ones([1], &device))
            .map(|v| v == [1.0])
    })?;
    match correct {
        Ok(true) => Ok(()),
        _ => Err(CoreError::Device(format!(
            "device {spec} returned wrong results on a probe in {precision}"
        ))),
    }
}

/// Runs `f`, turning a panic inside the backend (no adapter, no driver) into
/// an error that names the device and `hint`, with the panic hook silenced
/// meanwhile (also for the backend's own background threads).
#[allow(dead_code)]
fn catch_backend_panic<T>(spec: &DeviceSpec, hint: &str, f: impl FnOnce() -> T) -> Result<T> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    outcome.map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        CoreError::Device(format!(
            "device {spec} is not usable: {hint}. Backend said: {why}"
        ))
    })
}

/// A job that runs on several devices of one backend (data-parallel
/// training), the first being the main one.
pub trait MultiDeviceJob {
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B`'s `devices` (at least one).
    fn run<B: Backend>(self, devices: Vec<B::Device>) -> Self::Output;
}

/// Runs `job` on the devices `specs` of one backend, each started and set
/// to `precision` like [`run_on_with`]'s: `cuda:0,cuda:1`, `wgpu:0,wgpu:1`,
/// or one CPU backend listed several times (workers taking turns on the
/// same cores: for checking the multi-device mechanics without GPUs).
pub fn run_on_devices<J: MultiDeviceJob>(
    specs: &[DeviceSpec],
    precision: Precision,
    job: J,
) -> Result<J::Output> {
    let main = specs
        .first()
        .ok_or_else(|| CoreError::Device("no device given".into()))?;
    for spec in &specs[1..] {
        let same_kind = match (main, spec) {
            (DeviceSpec::Cpu(a), DeviceSpec::Cpu(b)) => {
                a.unwrap_or(DEFAULT_CPU) == b.unwrap_or(DEFAULT_CPU)
            }
            (DeviceSpec::Wgpu(Some(_)), DeviceSpec::Wgpu(Some(_))) => true,
            (DeviceSpec::Cuda(_), DeviceSpec::Cuda(_)) => true,
            _ => false,
        };
        if !same_kind {
            return Err(CoreError::Device(format!(
                "devices {main} and {spec} are not numbered devices of one backend: list cuda:0,cuda:1,... or wgpu:0,wgpu:1,... (or one CPU backend several times)"
            )));
        }
        if !matches!(spec, DeviceSpec::Cpu(_)) && specs.iter().filter(|s| *s == spec).count() > 1 {
            return Err(CoreError::Device(format!(
                "device {spec} is listed twice: name each GPU once"
            )));
        }
    }
    run_on_with(
        main,
        precision,
        OnDevices {
            specs: specs.to_vec(),
            precision,
            job,
        },
    )?
}

/// [`run_on_devices`]'s job on the main device: starts the others, then
/// runs the inner job on all.
struct OnDevices<J> {
    specs: Vec<DeviceSpec>,
    precision: Precision,
    job: J,
}

impl<J: MultiDeviceJob> BackendJob for OnDevices<J> {
    type Output = Result<J::Output>;
    fn run<B: Backend>(self, main: B::Device) -> Self::Output {
        use burn::tensor::backend::{Device, DeviceId};
        let mut devices = vec![main.clone()];
        for spec in &self.specs[1..] {
            let device = match *spec {
                DeviceSpec::Cpu(_) => main.clone(),
                // Device id (0, N): WGPU's N-th discrete GPU, CUDA's GPU N.
                DeviceSpec::Wgpu(index) => {
                    B::Device::from_id(DeviceId::new(0, index.unwrap_or(0) as u16))
                }
                DeviceSpec::Cuda(index) => {
                    #[cfg(feature = "cuda")]
                    cuda_driver::check(index)?;
                    B::Device::from_id(DeviceId::new(0, index as u16))
                }
            };
            if !matches!(spec, DeviceSpec::Cpu(_)) {
                let hint = "this GPU did not start";
                prepare::<B>(&device, spec, self.precision, Some(hint))?;
            }
            devices.push(device);
        }
        Ok(self.job.run::<B>(devices))
    }
}

/// Device memory held by a GPU backend's pool, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of live tensors (without padding).
    pub in_use: u64,
    /// Bytes the pool has taken from the device (pages, free or not): what
    /// the driver sees this process use, without the runtime's own context.
    pub reserved: u64,
}

impl DeviceMemory {
    /// The larger of each field.
    pub fn max(self, other: Self) -> Self {
        Self {
            in_use: self.in_use.max(other.in_use),
            reserved: self.reserved.max(other.reserved),
        }
    }
}

/// What the memory pool of device `spec` holds now, as seen from this
/// thread's stream (the one a [`BackendJob`] run on this thread used);
/// `None` on the CPU backends, which have no pool. Call it only once the
/// device was started (inside or after a job on it).
pub fn device_memory(spec: &DeviceSpec) -> Option<DeviceMemory> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    use burn::cubecl::Runtime;
    let usage = match *spec {
        DeviceSpec::Cpu(_) => None,
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(index) => {
            use burn::backend::wgpu::WgpuDevice;
            let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
            burn::cubecl::wgpu::WgpuRuntime::client(&device)
                .memory_usage()
                .ok()
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => {
            let device = burn::backend::cuda::CudaDevice::new(index);
            burn::cubecl::cuda::CudaRuntime::client(&device)
                .memory_usage()
                .ok()
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }?;
    Some(DeviceMemory {
        in_use: usage.bytes_in_use,
        reserved: usage.bytes_reserved,
    })
}

/// Loads the CUDA driver library ourselves before Burn does: Burn 0.21
/// panics on a background thread when it is missing.
#[cfg(feature = "cuda")]
mod cuda_driver {
    use crate::error::{CoreError, Result};

    #[cfg(windows)]
    const LIBRARY: &str = "nvcuda.dll";
    #[cfg(not(windows))]
    const LIBRARY: &str = "libcuda.so.1";

    pub fn check(index: usize) -> Result<()> {
        // SAFETY: loading the system CUDA driver runs only its initialisers.
        let lib = unsafe { libloading::Library::new(LIBRARY) }.map_err(|e| {
            CoreError::Device(format!(
                "CUDA driver library {LIBRARY} could not be loaded ({e}): install the NVIDIA driver, or use --device cpu or wgpu"
            ))
        })?;
        type CuInit = unsafe extern "C" fn(u32) -> i32;
        type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
        // SAFETY: the symbols have these C signatures in every CUDA driver.
        unsafe {
            let init: libloading::Symbol<CuInit> = lib
                .get(b"cuInit\0")
                .map_err(|e| CoreError::Device(format!("{LIBRARY} lacks cuInit: {e}")))?;
            let rc = init(0);
            if rc != 0 {
                return Err(CoreError::Device(format!(
                    "cuInit failed with CUDA error {rc}: the driver is installed but no GPU is usable"
                )));
            }
            let count_fn: libloading::Symbol<CuDeviceGetCount> = lib
                .get(b"cuDeviceGetCount\0")
                .map_err(|e| CoreError::Device(format!("{LIBRARY} lacks cuDeviceGetCount: {e}")))?;
            let mut count = 0i32;
            let rc = count_fn(&mut count);
            if rc != 0 || index >= count.max(0) as usize {
                return Err(CoreError::Device(format!(
                    "CUDA device {index} does not exist ({count} GPU(s) visible, error code {rc})"
                )));
            }
        }
        Ok(())
    }
}

/// The default CPU backend type (see [`DEFAULT_CPU`]), for tests and tools
/// that need a concrete one.
#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex;
/// The default CPU backend type (see [`DEFAULT_CPU`]), for tests and tools
/// that need a concrete one.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type CpuBackend = burn::backend::NdArray;

/// The WGPU backend type (for the cross-backend tests).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu(None));
        assert_eq!(
            "CPU:flex".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cpu(Some(CpuKind::Flex))
        );
        assert_eq!(
            "wgpu:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Wgpu(Some(1))
        );
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            "cuda:2".parse::<DeviceSpec>().unwrap().to_string(),
            "cuda:2"
        );
        for bad in ["gpu", "cuda:x", "cpu:mkl", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    struct Sum;
    impl BackendJob for Sum {
        type Output = f32;
        fn run<B: Backend>(self, device: B::Device) -> f32 {
            burn::tensor::Tensor::<B, 1>::from_floats([1.0, 2.0], &device)
                .sum()
                .into_data()
                .to_vec::<f32>()
                .unwrap()[0]
        }
    }

    #[test]
    fn runs_a_job_on_the_cpu_backends() {
        assert_eq!(run_on(&DeviceSpec::Cpu(None), Sum).unwrap(), 3.0);
        #[cfg(feature = "flex")]
        assert_eq!(
            run_on(&DeviceSpec::Cpu(Some(CpuKind::Flex)), Sum).unwrap(),
            3.0
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_not_compiled_in_is_named() {
        let e = run_on(&DeviceSpec::Cuda(0), Sum).unwrap_err().to_string();
        assert!(e.contains("`cuda` cargo feature"), "{e}");
    }
}
