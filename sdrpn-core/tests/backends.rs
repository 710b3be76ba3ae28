//! The tensor parts of the method give the same numbers on every compiled-in
//! backend: each is run on the default CPU backend and compared with the
//! others (flex, WGPU) within 1e-5.
//!
//! WGPU needs a Vulkan/Metal/DX12 adapter; on a CPU-only Linux machine Mesa's
//! lavapipe provides one (`apt-get install mesa-vulkan-drivers libvulkan1`).
//! Without an adapter the WGPU comparison is skipped with a message, unless
//! `SDRPN_REQUIRE_WGPU=1` (set in CI), which makes it fail instead. With
//! `--features cuda` CUDA GPU 0 is compared too (`SDRPN_REQUIRE_CUDA=1`
//! makes a missing driver or GPU a failure).

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use sdrpn_core::attention::AttentionAccumulator;
use sdrpn_core::backend::{
    run_on, run_on_unless_missing, BackendJob, CpuKind, DeviceSpec, Precision,
};
use sdrpn_core::blur::gaussian_blur3;
use sdrpn_core::denoise::{denoise, sinks_from_attention};
use sdrpn_core::labels::{build_labels, LabelConfig};
use sdrpn_core::loss::LossKind;
use sdrpn_core::readback::floats;
use sdrpn_core::roi::RoiConfig;
use sdrpn_core::rpn::RpnHead;
use sdrpn_core::{Grid, HeadSelection};

/// Deterministic pseudo-random floats in [0, 1).
fn seeded(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = sdrpn_core::rng::SplitMix::new(seed);
    (0..n).map(|_| rng.next_f32()).collect()
}

/// Runs every tensor part of the core and returns named outputs.
struct Suite;

impl BackendJob for Suite {
    type Output = Vec<(&'static str, Vec<f32>)>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let grid = Grid::new(6, 6).unwrap();
        let p = grid.len();
        let t2 = |v: Vec<f32>, shape: [usize; 2]| {
            Tensor::<B, 2>::from_data(TensorData::new(v, shape), &device)
        };
        let out = |t: Tensor<B, 2>| floats(t).unwrap();
        let mut results = Vec::new();

        // Aggregation: 3 steps x 4 heads x (5 + 36 + 2) keys, softmax-normalised rows.
        let keys = 5 + p + 2;
        let rows = Tensor::<B, 3>::from_data(
            TensorData::new(seeded(1, 3 * 4 * keys), [3, 4, keys]),
            &device,
        );
        let rows = burn::tensor::activation::softmax(rows * 4.0, 2);
        let heads = "3:1,3"
            .parse::<HeadSelection>()
            .unwrap()
            .resolve(4, 4)
            .unwrap();
        let mut acc = AttentionAccumulator::<B>::new(heads, 5..5 + p, grid, &device).unwrap();
        acc.add(3, rows.clone()).unwrap();
        let grounding = acc.finish().unwrap().reshape([1, p]);
        let sink_heads = "0:all"
            .parse::<HeadSelection>()
            .unwrap()
            .resolve(4, 4)
            .unwrap();
        let mut acc = AttentionAccumulator::<B>::new(sink_heads, 5..5 + p, grid, &device).unwrap();
        acc.add(0, rows).unwrap();
        let sink = acc.finish().unwrap().reshape([1, p]);
        results.push(("grounding map", out(grounding.clone())));

        // Denoising and labels (a batch of the real map plus two crafted ones).
        let clean = denoise(grounding.clone(), sinks_from_attention(sink, 0.03));
        results.push(("denoised map", out(clean.clone())));
        let mut peaked = vec![0.0f32; p];
        peaked[14] = 1.0;
        peaked[15] = 0.5;
        peaked[21] = 0.05;
        let batch = Tensor::cat(vec![clean, t2(peaked, [1, p]), t2(seeded(2, p), [1, p])], 0);
        let labels = build_labels(batch, grid, &LabelConfig::default()).unwrap();
        results.push(("label targets", out(labels.target.clone())));
        results.push(("label valid", out(labels.valid.clone().float())));

        // RPN head with seeded projections.
        let (d, h, hd) = (8, 2, 4);
        let mut head = RpnHead {
            q_proj: LinearConfig::new(d, h * hd)
                .with_bias(false)
                .init::<B>(&device),
            k_proj: LinearConfig::new(d, h * hd)
                .with_bias(false)
                .init::<B>(&device),
            num_heads: h,
            num_kv_heads: h,
            head_dim: hd,
            rotary: None,
        };
        head.q_proj.weight = Param::from_tensor(t2(seeded(3, d * h * hd), [d, h * hd]) - 0.5);
        head.k_proj.weight = Param::from_tensor(t2(seeded(4, d * h * hd), [d, h * hd]) - 0.5);
        let states =
            Tensor::<B, 3>::from_data(TensorData::new(seeded(5, 3 * p * d), [3, p, d]), &device);
        let query = Tensor::<B, 2>::from_data(TensorData::new(seeded(6, 3 * d), [3, d]), &device);
        let logits = head.forward(query, states, None);
        results.push(("RPN logits", out(logits.clone())));

        // Losses.
        for (name, kind) in [
            ("bce", LossKind::Bce),
            ("focal", LossKind::focal()),
            ("mse", LossKind::Mse),
        ] {
            let l = kind.loss(logits.clone(), labels.target.clone(), labels.valid.clone());
            results.push((name, floats(l).unwrap()));
        }

        // Blur and the RoI decision on a sigmoid map.
        let probs = sigmoid(logits.slice([0..1, 0..p]) * 10.0).reshape([p]);
        let blurred = gaussian_blur3(probs.clone().reshape([1, 6, 6]), 1.0).unwrap();
        results.push(("blurred map", out(blurred.reshape([1, p]))));
        let roi = RoiConfig {
            threshold: 0.8,
            ..RoiConfig::default()
        }
        .select(probs, grid)
        .unwrap();
        results.push((
            "RoI mask",
            roi.mask.iter().map(|&m| m as u8 as f32).collect(),
        ));

        // Gather by index as the RPN does.
        let idx = Tensor::<B, 1, Int>::from_data([2i64, 0], &device);
        let g = t2(seeded(7, 6), [3, 2]).select(0, idx);
        results.push(("select", out(g)));
        results
    }
}

fn compare(reference: &[(&str, Vec<f32>)], other: &[(&str, Vec<f32>)], backend: &str) {
    assert_eq!(reference.len(), other.len());
    for ((name, a), (_, b)) in reference.iter().zip(other) {
        assert_eq!(a.len(), b.len(), "{name}: length differs on {backend}");
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{name}: max abs difference {worst} on {backend} exceeds 1e-5"
        );
    }
}

#[test]
fn cpu_backends_agree() {
    let reference = run_on(&DeviceSpec::Cpu(Some(CpuKind::NdArray)), Suite).unwrap();
    assert!(reference
        .iter()
        .all(|(_, v)| v.iter().all(|x| x.is_finite())));
    // The crafted inputs exercise every outcome: foreground, background, ignore, and a mask.
    let get = |name: &str| &reference.iter().find(|(n, _)| *n == name).unwrap().1;
    let (target, valid) = (get("label targets"), get("label valid"));
    assert!(
        target
            .iter()
            .zip(valid)
            .any(|(&t, &v)| t == 1.0 && v == 1.0),
        "no foreground"
    );
    assert!(
        target
            .iter()
            .zip(valid)
            .any(|(&t, &v)| t == 0.0 && v == 1.0),
        "no background"
    );
    assert!(valid.contains(&0.0), "no ignore");
    assert!(get("RoI mask").contains(&1.0), "empty RoI mask");
    assert!(get("RoI mask").contains(&0.0), "full RoI mask");
    let flex = run_on(&DeviceSpec::Cpu(Some(CpuKind::Flex)), Suite).unwrap();
    compare(&reference, &flex, "flex");
}

/// Compares `spec` with the CPU (skipped when `spec` is unusable, unless
/// its `require_variable` is `1`).
fn compare_gpu_with_cpu(spec: DeviceSpec) {
    let reference = run_on(&DeviceSpec::Cpu(None), Suite).unwrap();
    if let Some(gpu) = run_on_unless_missing(&spec, Precision::F32, Suite).unwrap() {
        compare(&reference, &gpu, &spec.to_string());
    }
}

#[test]
fn wgpu_agrees_with_cpu() {
    compare_gpu_with_cpu(DeviceSpec::Wgpu(None));
}

/// Built only with `--features cuda`.
#[cfg(feature = "cuda")]
#[test]
fn cuda_agrees_with_cpu() {
    compare_gpu_with_cpu(DeviceSpec::Cuda(0));
}
