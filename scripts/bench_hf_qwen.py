#!/usr/bin/env python3
"""CPU benchmark of HF transformers Qwen2.5-VL on a mid-size random config (~150M params),
the Qwen counterpart of scripts/bench_hf.py (same phases, same reporting).

The Rust side builds the same model from experiments/bench/qwen-mid150m.json (written
by this script) and measures the same phases: `sdrpn bench model --config
experiments/bench/qwen-mid150m.json`.

    /work/refenv/bin/python scripts/bench_hf_qwen.py [--threads N] [--json] [--impl eager,sdpa]

Phases (batch 1, f32, torch.inference_mode, 1 warm-up then the median of 3):
  vision   : vision tower (window attention, full attention in fullatt_block_indexes) and the
             2x2 merger on one 672x672 image = 48x48 patches = 576 merged tokens
  prefill  : language model forward over the whole prompt (576 image embeddings merged, M-RoPE
             positions from get_rope_index), filling the KV cache, lm_head on the last position
  decode   : greedy generate() of exactly 32 new tokens; decode time = from the first new token
             (made by the prefill) to the 32nd, i.e. 31 cached single-token steps
Input: 20 seeded random text ids, <|vision_start|>, 576 image pads, <|vision_end|>, 20 more
random ids -> 618 tokens; pixel_values = torch.randn(2304, 1176) with seed 0 (the processor's
flattened patches; values do not matter for timing).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_hf import StepTimes, machine_info, report, time_phases  # noqa: E402  (shared with the LLaVA bench)

VOCAB = 32000
IMAGE_TOKEN, VISION_START, VISION_END, PAD_TOKEN = 31990, 31991, 31992, 31993
N_BEFORE, GRID, N_AFTER = 20, 48, 20
N_IMAGE = (GRID // 2) ** 2
NEW_TOKENS = 32
CONFIG_PATH = os.path.join("experiments", "bench", "qwen-mid150m.json")


def make_config():
    text = dict(
        vocab_size=VOCAB,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2048,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=4096,
        rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]},
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    vision = dict(
        depth=8,
        hidden_size=512,
        num_heads=8,
        intermediate_size=1368,
        hidden_act="silu",
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[3, 7],
        out_hidden_size=768,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        pad_token_id=PAD_TOKEN,
    )


def make_inputs():
    g = np.random.default_rng(0)
    before = g.integers(3, 31900, N_BEFORE).tolist()
    after = g.integers(3, 31900, N_AFTER).tolist()
    ids = before + [VISION_START] + [IMAGE_TOKEN] * N_IMAGE + [VISION_END] + after
    ids = torch.tensor([ids], dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(GRID * GRID, 3 * 2 * 14 * 14, generator=gen)
    grid_thw = torch.tensor([[1, GRID, GRID]])
    return ids, pixel_values, grid_thw


@torch.inference_mode()
def bench_impl(cfg, impl, ids, pixel_values, grid_thw, reps):
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation=impl, dtype=torch.float32)
    model = model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    T = ids.shape[1]

    def vision():
        return model.model.get_image_features(pixel_values, grid_thw)[0]

    feats = vision()
    embeds = model.get_input_embeddings()(ids)
    mask = (ids == IMAGE_TOKEN).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    position_ids, _ = model.model.get_rope_index(ids, grid_thw, None, attention_mask=torch.ones_like(ids))

    def prefill():
        out = model.model.language_model(inputs_embeds=embeds, position_ids=position_ids, use_cache=True)
        return model.lm_head(out.last_hidden_state[:, -1:])

    def decode():
        st = StepTimes()
        t0 = time.perf_counter()
        seq = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixel_values,
            image_grid_thw=grid_thw,
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
            "tokens_before_image": N_BEFORE + 1,
            "image_grid": [1, GRID, GRID],
            "image_tokens": N_IMAGE,
            "tokens_after_image": N_AFTER + 1,
            "prompt_tokens": N_BEFORE + N_IMAGE + N_AFTER + 2,
            "new_tokens": NEW_TOKENS,
            "note": "ids: numpy default_rng(0).integers(3, 31900, 20), <|vision_start|>, 576 x <|image_pad|>, "
            "<|vision_end|>, the same generator's .integers(3, 31900, 20); pixel_values = torch.randn(2304, 1176) "
            "with seed 0; weights: HF default init under torch.manual_seed(0) (values do not matter for timing)",
        }
        with open(CONFIG_PATH, "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
            f.write("\n")
    ids, pixel_values, grid_thw = make_inputs()
    info = machine_info(CONFIG_PATH)
    results = [bench_impl(cfg, impl, ids, pixel_values, grid_thw, args.reps) for impl in args.impl.split(",")]
    report(info, results, N_IMAGE, args.reps, args.json, "vision+merger")


if __name__ == "__main__":
    main()
