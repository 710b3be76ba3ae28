//! Reading HF safetensors checkpoints: a single `model.safetensors` or
//! shards listed in `model.safetensors.index.json`, stored as f32, f16 or
//! bf16, in the llava-hf key layout or the newer transformers layout.
//!
//! Keys are renamed to one canonical layout (llava-hf's) on open; the
//! loader then hands tensors out by canonical name, checks every shape,
//! and at the end reports every missing, unexpected and wrongly shaped
//! tensor at once.

use crate::error::{LlavaError, Result};
use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sdrpn_core::rng::SplitMix;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A named f32 tensor on the host: `(name, PyTorch shape, values)`.
pub type HostTensor = (String, Vec<usize>, Vec<f32>);

/// How a model parameter relates to its checkpoint tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredLayout {
    /// The same values in the same shape.
    AsIs,
    /// A linear weight kept as Burn's `[in, out]`, stored PyTorch-style
    /// with `stored` shape (`[out, in]`, or `[out, c, k, k]` for a patch
    /// convolution).
    Transposed {
        /// The checkpoint shape.
        stored: Vec<usize>,
    },
}

/// A model parameter's checkpoint name, recorded as the loader hands it out,
/// so that a trained model can be written back in the checkpoint layout.
#[derive(Clone, Debug)]
pub struct NamedParam {
    /// Canonical checkpoint name.
    pub name: String,
    /// The parameter's id (kept by training).
    pub id: ParamId,
    /// How it is stored.
    pub layout: StoredLayout,
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    original: String,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// An opened checkpoint: memory-mapped files and a table of tensors by
/// canonical name. Nothing is read until a tensor is asked for.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    entries: BTreeMap<String, Entry>,
}

/// Renames a key of the newer transformers layout to the llava-hf layout.
pub fn canonical_name(key: &str) -> String {
    const RULES: [(&str, &str); 4] = [
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    ];
    for (from, to) in RULES {
        if let Some(rest) = key.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    key.to_string()
}

/// Buffers that some checkpoints carry and the model recomputes.
fn is_ignorable_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || name.ends_with("embeddings.position_ids")
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`, keys in LLaVA's canonical layout
    /// ([`canonical_name`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_renamed(dir, canonical_name)
    }

    /// Opens the checkpoint in `dir`, renaming every stored key with
    /// `canonical` (one layout for every key layout a host's checkpoints use).
    pub fn open_renamed(dir: &Path, canonical: fn(&str) -> String) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_names: Vec<String> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| LlavaError::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| LlavaError::Json {
                    path: index.clone(),
                    reason: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LlavaError::Json {
                    path: index.clone(),
                    reason: "no \"weight_map\" object".into(),
                })?;
            let set: BTreeSet<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            set.into_iter().collect()
        } else if single.exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(LlavaError::invalid(
                "checkpoint",
                format!(
                    "{} holds neither model.safetensors nor model.safetensors.index.json",
                    dir.display()
                ),
            ));
        };
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for name in shard_names {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(|e| LlavaError::io(&path, e))?;
            // SAFETY: the file is only read; a concurrent writer is outside our contract.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LlavaError::io(&path, e))?;
            let (header, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| LlavaError::Safetensors {
                    path: path.clone(),
                    reason: format!("not a valid safetensors file: {e}"),
                })?;
            let start = 8 + header;
            for (key, info) in meta.tensors() {
                let canonical = canonical(&key);
                let entry = Entry {
                    file: files.len(),
                    original: key.clone(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (start + info.data_offsets.0, start + info.data_offsets.1),
                };
                if let Some(prev) = entries.insert(canonical.clone(), entry) {
                    return Err(LlavaError::Safetensors {
                        path,
                        reason: format!(
                            "tensor {canonical} is stored twice (also as {})",
                            prev.original
                        ),
                    });
                }
            }
            files.push((path, mmap));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            entries,
        })
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Canonical names of all stored tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Shape of a stored tensor, by canonical name.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The values of a tensor as f32, whatever the stored float dtype.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entries.get(name).ok_or_else(|| {
            LlavaError::invalid(
                "tensor name",
                format!("{name} is not in {}", self.dir.display()),
            )
        })?;
        let (path, mmap) = &self.files[e.file];
        let bytes = mmap
            .get(e.range.0..e.range.1)
            .ok_or_else(|| LlavaError::Safetensors {
                path: path.clone(),
                reason: format!(
                    "tensor {} points past the end of the file (truncated download?)",
                    e.original
                ),
            })?;
        let count: usize = e.shape.iter().product();
        let width = match e.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(LlavaError::Safetensors {
                    path: path.clone(),
                    reason: format!(
                        "tensor {} has dtype {other:?}; only F32, F16 and BF16 are supported",
                        e.original
                    ),
                })
            }
        };
        if bytes.len() != count * width {
            return Err(LlavaError::Safetensors {
                path: path.clone(),
                reason: format!(
                    "tensor {} holds {} bytes, its shape {:?} needs {}",
                    e.original,
                    bytes.len(),
                    e.shape,
                    count * width
                ),
            });
        }
        Ok(match e.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}

/// How a random weight is drawn: one value everywhere (norm scales,
/// biases) or uniform in `[-a, a)`.
enum RandomLaw {
    Constant(f32),
    Uniform(f32),
}

/// Hands tensors of a [`Checkpoint`] to model constructors, recording every
/// problem instead of stopping at the first.
pub struct TensorLoader<'a, B: Backend> {
    /// `None`: random weights (benchmarks, demos).
    checkpoint: Option<&'a Checkpoint>,
    rng: SplitMix,
    /// Random weight matrices scaled by their fan-in (see
    /// [`TensorLoader::scaled_by_fan_in`]) instead of standard deviation 0.02.
    fan_in_scaled: bool,
    /// Random weights handed out so far, when asked to keep them.
    recorded: Option<Vec<HostTensor>>,
    /// Random weights drawn on the device by the backend's own generator
    /// (see [`TensorLoader::random_on_device`]) instead of on the host.
    on_device: bool,
    device: B::Device,
    taken: BTreeSet<String>,
    params: Vec<NamedParam>,
    missing: Vec<String>,
    wrong_shape: Vec<String>,
    non_finite: Vec<String>,
    failed: Option<LlavaError>,
}

impl<'a, B: Backend> TensorLoader<'a, B> {
    /// A loader that creates tensors on `device` (in the device's default float dtype).
    pub fn new(checkpoint: &'a Checkpoint, device: &B::Device) -> Self {
        Self::with_source(Some(checkpoint), 0, device)
    }

    /// A loader that makes seeded random weights instead of reading a
    /// checkpoint: norm scales 1, biases 0, everything else uniform with
    /// standard deviation 0.02. For benchmarks and demos, where the values
    /// do not matter.
    pub fn random(device: &B::Device, seed: u64) -> Self {
        Self::with_source(None, seed ^ 0x9E37_79B9_7F4A_7C15, device)
    }

    fn with_source(checkpoint: Option<&'a Checkpoint>, rng_state: u64, device: &B::Device) -> Self {
        Self {
            checkpoint,
            rng: SplitMix::new(rng_state),
            fan_in_scaled: false,
            recorded: None,
            on_device: false,
            device: device.clone(),
            taken: BTreeSet::new(),
            params: Vec::new(),
            missing: Vec::new(),
            wrong_shape: Vec::new(),
            non_finite: Vec::new(),
            failed: None,
        }
    }

    /// Random weight matrices and convolution kernels uniform in
    /// `[-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's default for `Linear`
    /// and `Conv2d`), embeddings still at standard deviation 0.02: what a
    /// narrow model trained from scratch needs (0.02, HF's choice for wide
    /// models, is about 2.5x too small at width 128 and halves how fast the
    /// testbed's ViT learns to read).
    pub fn scaled_by_fan_in(mut self) -> Self {
        self.fan_in_scaled = true;
        self
    }

    /// Like [`TensorLoader::random`] (same distributions), but drawn on the
    /// device by the backend's own generator seeded with `seed`, in the
    /// device's float dtype and already in Burn's layout: a 7B model is made
    /// in a second on a GPU instead of minutes of host work and a 28 GB f32
    /// upload. The values differ from [`TensorLoader::random`]'s and from
    /// backend to backend: for benchmarks, where they do not matter.
    pub fn random_on_device(device: &B::Device, seed: u64) -> Self {
        B::seed(device, seed);
        let mut loader = Self::random(device, seed);
        loader.on_device = true;
        loader
    }

    /// Keeps every random tensor handed out, for [`TensorLoader::take_recorded`].
    pub fn recording(mut self) -> Self {
        self.recorded = Some(Vec::new());
        self
    }

    /// The random tensors handed out so far (`name`, PyTorch shape, values).
    pub fn take_recorded(&mut self) -> Vec<HostTensor> {
        self.recorded.take().unwrap_or_default()
    }

    /// How the random tensor `name` of PyTorch shape `shape` is drawn.
    fn random_law(&self, name: &str, shape: &[usize]) -> RandomLaw {
        let leaf = name.rsplit('.').nth(1).unwrap_or("");
        if leaf.contains("norm") || leaf.contains("layrnorm") {
            return RandomLaw::Constant(if name.ends_with(".weight") { 1.0 } else { 0.0 });
        }
        if name.ends_with(".bias") {
            return RandomLaw::Constant(0.0);
        }
        let embedding = name.contains("position_embedding")
            || name.contains("class_embedding")
            || name.contains("embed_tokens");
        // Uniform in [-a, a) has standard deviation a / sqrt(3).
        RandomLaw::Uniform(if self.fan_in_scaled && shape.len() >= 2 && !embedding {
            1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
        } else {
            0.02f32 * 3f32.sqrt()
        })
    }

    fn random_values(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        let count = shape.iter().product();
        match self.random_law(name, shape) {
            RandomLaw::Constant(value) => vec![value; count],
            RandomLaw::Uniform(a) => (0..count)
                .map(|_| (self.rng.next_f32() * 2.0 - 1.0) * a)
                .collect(),
        }
    }

    /// The random tensor `name` drawn on the device, of Burn shape `shape`
    /// (`stored`: its PyTorch shape, which sets the law).
    fn device_random<const D: usize>(
        &mut self,
        name: &str,
        stored: &[usize],
        shape: [usize; D],
    ) -> Tensor<B, D> {
        self.taken.insert(name.to_string());
        match self.random_law(name, stored) {
            RandomLaw::Constant(value) => Tensor::full(shape, value, &self.device),
            RandomLaw::Uniform(a) => Tensor::random(
                shape,
                burn::tensor::Distribution::Uniform(-a as f64, a as f64),
                &self.device,
            ),
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The tensor `name` with the given shape. On any problem the problem is
    /// recorded and zeros are returned, so construction can go on and report
    /// everything in [`TensorLoader::finish`].
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        if self.on_device {
            return self.device_random(name, &shape, shape);
        }
        match self.values(name, &shape) {
            Some(values) => Tensor::from_data(TensorData::new(values, shape), &self.device),
            None => Tensor::zeros(shape, &self.device),
        }
    }

    /// The tensor `name` as a parameter, recorded under its name (see
    /// [`TensorLoader::take_param_names`]).
    pub fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Param<Tensor<B, D>> {
        let param = Param::from_tensor(self.tensor(name, shape));
        self.params.push(NamedParam {
            name: name.to_string(),
            id: param.id,
            layout: StoredLayout::AsIs,
        });
        param
    }

    /// The checkpoint name of every parameter handed out so far.
    pub fn take_param_names(&mut self) -> Vec<NamedParam> {
        std::mem::take(&mut self.params)
    }

    /// The values of `name` as f32 if it exists with `shape`; records the problem otherwise.
    fn values(&mut self, name: &str, shape: &[usize]) -> Option<Vec<f32>> {
        self.taken.insert(name.to_string());
        let Some(checkpoint) = self.checkpoint else {
            let values = self.random_values(name, shape);
            if let Some(rec) = self.recorded.as_mut() {
                rec.push((name.to_string(), shape.to_vec(), values.clone()));
            }
            return Some(values);
        };
        match checkpoint.shape(name) {
            None => self.missing.push(name.to_string()),
            Some(found) if found != shape => {
                self.wrong_shape
                    .push(format!("{name}: expected {shape:?}, found {found:?}"));
            }
            Some(_) => match checkpoint.read_f32(name) {
                Ok(values) => {
                    let bad = values.iter().filter(|v| !v.is_finite()).count();
                    if bad == 0 {
                        return Some(values);
                    }
                    self.non_finite
                        .push(format!("{name} ({bad} of {})", values.len()));
                }
                Err(e) => {
                    self.failed.get_or_insert(e);
                }
            },
        }
        None
    }

    /// A linear layer stored PyTorch-style (`weight [out, in]`, optional
    /// `bias [out]`), transposed on the host to Burn's `[in, out]` so every
    /// backend gets a contiguous weight.
    pub fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Linear<B> {
        self.linear_stored_as(prefix, &[d_out, d_in], d_in, d_out, bias)
    }

    /// Like [`TensorLoader::linear`] for a weight stored with another shape
    /// of `d_out` rows (a patch-embedding convolution `[out, c, k, k]` is a
    /// linear map of flattened patches).
    pub fn linear_stored_as(
        &mut self,
        prefix: &str,
        stored: &[usize],
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Linear<B> {
        let name = format!("{prefix}.weight");
        let weight = if self.on_device {
            self.device_random(&name, stored, [d_in, d_out])
        } else {
            match self.values(&name, stored) {
                Some(w) => {
                    let mut t = vec![0.0f32; w.len()];
                    for (o, row) in w.chunks_exact(d_in).enumerate() {
                        for (i, &v) in row.iter().enumerate() {
                            t[i * d_out + o] = v;
                        }
                    }
                    Tensor::from_data(TensorData::new(t, [d_in, d_out]), &self.device)
                }
                None => Tensor::zeros([d_in, d_out], &self.device),
            }
        };
        let weight = Param::from_tensor(weight);
        self.params.push(NamedParam {
            name,
            id: weight.id,
            layout: StoredLayout::Transposed {
                stored: stored.to_vec(),
            },
        });
        let bias = bias.then(|| self.param(&format!("{prefix}.bias"), [d_out]));
        Linear { weight, bias }
    }

    /// Reports missing, unexpected and wrongly shaped tensors, or the first
    /// read error. Stored tensors the model did not take are unexpected,
    /// except recomputed buffers and the names `unused` accepts (parts of
    /// the checkpoint this model deliberately does not run).
    pub fn finish(self, unused: impl Fn(&str) -> bool) -> Result<()> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let Some(checkpoint) = self.checkpoint else {
            return Ok(());
        };
        if !self.non_finite.is_empty() {
            return Err(LlavaError::invalid(
                "checkpoint weights",
                format!(
                    "{}: NaN or infinite values in {}",
                    checkpoint.dir.display(),
                    self.non_finite.join(", ")
                ),
            ));
        }
        let unexpected: Vec<String> = checkpoint
            .names()
            .filter(|n| !self.taken.contains(*n) && !is_ignorable_buffer(n) && !unused(n))
            .map(str::to_string)
            .collect();
        if self.missing.is_empty() && unexpected.is_empty() && self.wrong_shape.is_empty() {
            return Ok(());
        }
        Err(LlavaError::Checkpoint {
            dir: checkpoint.dir.clone(),
            missing: self.missing,
            unexpected,
            wrong_shape: self.wrong_shape,
        })
    }
}

/// Writes f32 tensors as one safetensors file (atomically: temp + rename).
pub fn write_safetensors(path: &Path, tensors: &[HostTensor]) -> Result<()> {
    write_safetensors_as(path, tensors, Dtype::F32)
}

/// Writes tensors as one safetensors file stored in `dtype` (F32, F16 or
/// BF16, rounded to nearest), atomically.
pub fn write_safetensors_as(path: &Path, tensors: &[HostTensor], dtype: Dtype) -> Result<()> {
    let encode = |v: &[f32]| -> Result<Vec<u8>> {
        Ok(match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            other => {
                return Err(LlavaError::invalid(
                    "dtype",
                    format!("{other:?} cannot be written (f32, f16, bf16)"),
                ))
            }
        })
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| encode(v))
        .collect::<Result<_>>()?;
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| LlavaError::invalid("tensor", format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp).map_err(|e| LlavaError::Safetensors {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| LlavaError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_layout_keys_map_to_llava_hf() {
        assert_eq!(
            canonical_name("model.language_model.layers.3.mlp.up_proj.weight"),
            "language_model.model.layers.3.mlp.up_proj.weight"
        );
        assert_eq!(
            canonical_name("lm_head.weight"),
            "language_model.lm_head.weight"
        );
        assert_eq!(
            canonical_name("model.vision_tower.vision_model.pre_layrnorm.bias"),
            "vision_tower.vision_model.pre_layrnorm.bias"
        );
        assert_eq!(
            canonical_name("model.multi_modal_projector.linear_1.weight"),
            "multi_modal_projector.linear_1.weight"
        );
        // Already canonical names stay.
        assert_eq!(
            canonical_name("language_model.lm_head.weight"),
            "language_model.lm_head.weight"
        );
    }
}
