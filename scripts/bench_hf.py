#!/usr/bin/env python3
"""CPU benchmark of HF transformers LLaVA on a mid-size random config (~155M params).

The Rust side builds the same model from experiments/bench/mid150m.json (written
by this script) and measures the same three phases, so the numbers compare.

    /work/refenv/bin/python scripts/bench_hf.py [--threads N] [--json] [--impl eager,sdpa]

Phases (batch 1, f32, torch.inference_mode, 1 warm-up then the median of 3):
  vision   : vision tower (hidden_states[-2], CLS dropped) + projector on one 336x336 image
  prefill  : language model forward over the whole prompt (576 image embeddings merged),
             filling the KV cache, lm_head on the last position only (as generate does)
  decode   : greedy generate() of exactly 32 new tokens (min_new_tokens = max_new_tokens = 32);
             decode time = time from the first new token (made by the prefill) to the 32nd,
             i.e. 31 cached single-token steps; decode tok/s = 31 / that time
Input: a vicuna_v1 prompt as token ids: 35 system tokens (BOS included, as the real
Vicuna tokenizer gives), 576 image tokens, 20 tokens for "\\n" + a 12-word question +
" ASSISTANT:" -> 631 tokens. The ids are seeded random (no tokenizer needed).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import time

import numpy as np
import torch

import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, StoppingCriteria

IMAGE_TOKEN = 32000
PAD_TOKEN = 32001
N_SYSTEM, N_IMAGE, N_AFTER = 35, 576, 20
NEW_TOKENS = 32
CONFIG_PATH = os.path.join("experiments", "bench", "mid150m.json")


def make_config():
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2048,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD_TOKEN,
    )
    vision = CLIPVisionConfig(
        image_size=336,
        patch_size=14,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=512,
    )
    return LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=IMAGE_TOKEN,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=N_IMAGE,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        pad_token_id=PAD_TOKEN,
    )


def make_inputs():
    g = np.random.default_rng(0)
    before = [1] + g.integers(3, 32000, N_SYSTEM - 1).tolist()
    after = g.integers(3, 32000, N_AFTER).tolist()
    ids = torch.tensor([before + [IMAGE_TOKEN] * N_IMAGE + after], dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, 336, 336, generator=gen)
    return ids, pixel_values


def build_model(cfg, impl):
    torch.manual_seed(0)
    m = LlavaForConditionalGeneration._from_config(cfg, attn_implementation=impl, dtype=torch.float32)
    return m.eval()


class StepTimes(StoppingCriteria):
    """Called by generate() once per new token: records when each token was ready."""

    def __init__(self):
        self.t = []

    def __call__(self, input_ids, scores, **kwargs):
        self.t.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@torch.inference_mode()
def bench_impl(cfg, impl, ids, pixel_values, reps):
    model = build_model(cfg, impl)
    n_params = sum(p.numel() for p in model.parameters())
    T = ids.shape[1]

    def vision():
        return model.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=-2, vision_feature_select_strategy="default"
        )

    feats = vision()
    feats = feats[0] if isinstance(feats, (list, tuple)) else feats
    embeds = model.get_input_embeddings()(ids)
    mask = (ids == IMAGE_TOKEN).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))

    def prefill():
        out = model.model.language_model(inputs_embeds=embeds, use_cache=True)
        return model.lm_head(out.last_hidden_state[:, -1:])

    def decode():
        st = StepTimes()
        t0 = time.perf_counter()
        seq = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixel_values,
            do_sample=False,
            num_beams=1,
            min_new_tokens=NEW_TOKENS,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=PAD_TOKEN,
            stopping_criteria=[st],
        )
        t1 = time.perf_counter()
        assert seq.shape[1] - T == NEW_TOKENS, seq.shape
        assert len(st.t) == NEW_TOKENS
        return st.t[-1] - st.t[0], st.t[0] - t0, t1 - t0

    res = {"impl": impl, "params": n_params, "prompt_tokens": T}
    return time_phases(vision, prefill, decode, reps, res)


def time_phases(vision, prefill, decode, reps, res):
    """Warm-up, then the median of `reps` runs of each phase, into `res`.
    `decode()` returns (decode time, time to the first token, generate() time)."""

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    timed(vision)  # warm-up
    tv = [timed(vision) for _ in range(reps)]
    timed(prefill)
    tp = [timed(prefill) for _ in range(reps)]
    decode()
    d = [decode() for _ in range(reps)]
    res["vision_s"] = statistics.median(tv)
    res["prefill_s"] = statistics.median(tp)
    res["prefill_tok_s"] = res["prompt_tokens"] / res["prefill_s"]
    res["decode_s"] = statistics.median(x[0] for x in d)
    res["decode_steps"] = NEW_TOKENS - 1
    res["decode_tok_s"] = (NEW_TOKENS - 1) / res["decode_s"]
    res["generate_first_token_s"] = statistics.median(x[1] for x in d)
    res["generate_total_s"] = statistics.median(x[2] for x in d)
    res["all_runs"] = {"vision_s": tv, "prefill_s": tp, "decode_s": [x[0] for x in d]}
    return res


def machine_info(config_path):
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": os.getloadavg(),
        "config": config_path,
    }


def report(info, results, n_image, reps, as_json, vision_name):
    info["loadavg_after"] = os.getloadavg()
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if as_json:
        print(json.dumps({"info": info, "results": results}, indent=1))
        return
    print(f"transformers {info['transformers']}  torch {info['torch']}  python {info['python']}  "
          f"cpus {info['cpu_count']}  torch.get_num_threads() = {info['torch_threads']}")
    print(f"load average before {info['loadavg_before']}, after {info['loadavg_after']}")
    r0 = results[0]
    print(f"model: {r0['params'] / 1e6:.1f}M params, f32, batch 1, prompt {r0['prompt_tokens']} tokens "
          f"({n_image} image), {NEW_TOKENS} new tokens; median of {reps} after 1 warm-up")
    for r in results:
        print(f"[{r['impl']:>5}] {vision_name} {r['vision_s'] * 1e3:8.1f} ms | "
              f"prefill {r['prefill_s'] * 1e3:8.1f} ms = {r['prefill_tok_s']:7.1f} tok/s | "
              f"decode {r['decode_steps']} steps {r['decode_s'] * 1e3:8.1f} ms = {r['decode_tok_s']:6.2f} tok/s | "
              f"generate(): first token {r['generate_first_token_s']:.2f} s, total {r['generate_total_s']:.2f} s")
    print(f"peak RSS {info['peak_rss_mib']:.0f} MiB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--impl", default="eager,sdpa")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-write-config", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = make_config()
    if not args.no_write_config:
        os.makedirs(os.path.dirname(CONFIG_PATH), exist_ok=True)
        d = cfg.to_diff_dict()
        d.pop("transformers_version", None)
        d["bench_input"] = {
            "tokens_before_image": N_SYSTEM,
            "image_tokens": N_IMAGE,
            "tokens_after_image": N_AFTER,
            "prompt_tokens": N_SYSTEM + N_IMAGE + N_AFTER,
            "new_tokens": NEW_TOKENS,
            "note": "ids: [1] + numpy default_rng(0).integers(3, 32000, 34), then 576 x 32000, then the same "
            "generator's .integers(3, 32000, 20); pixel_values = torch.randn(1,3,336,336) with seed 0; "
            "weights: HF default init under torch.manual_seed(0) (values do not matter for timing)",
        }
        with open(CONFIG_PATH, "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
            f.write("\n")

    ids, pixel_values = make_inputs()
    info = machine_info(CONFIG_PATH)
    results = [bench_impl(cfg, impl, ids, pixel_values, args.reps) for impl in args.impl.split(",")]
    report(info, results, N_IMAGE, args.reps, args.json, "vision+projector")


if __name__ == "__main__":
    main()
