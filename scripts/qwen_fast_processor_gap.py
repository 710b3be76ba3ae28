#!/usr/bin/env python3
"""How far transformers' torchvision "fast" Qwen2-VL image processor is from the slow PIL one.

The sdrpn-qwen fixtures (scripts/make_qwen_fixtures.py) use the slow `Qwen2VLImageProcessor`
(PIL bicubic resize). In transformers 4.57, `AutoProcessor.from_pretrained` on a Qwen2.5-VL
directory silently gives `Qwen2VLImageProcessorFast` instead when torchvision is installed
(unless `use_fast=False`). This prints, per fixture image, the pixel_values gap between the two
and what it does to tiny-qwen's logits and greedy answer. Needs torchvision (see
scripts/requirements-fixtures.txt).

    nice -n 10 /work/refenv/bin/python scripts/qwen_fast_processor_gap.py   # from the repo root
"""

import argparse
import os

import numpy as np
import torch
from PIL import Image

from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLImageProcessorFast,
)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

QUESTION = "What is in the picture?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.path.join("sdrpn-qwen", "tests", "fixtures"))
    args = ap.parse_args()
    d = os.path.join(args.fixtures, "tiny-qwen")
    slow = Qwen2_5_VLProcessor.from_pretrained(d, use_fast=False)
    fast = Qwen2_5_VLProcessor.from_pretrained(d, use_fast=True)
    assert type(slow.image_processor) is Qwen2VLImageProcessor, type(slow.image_processor)
    assert type(fast.image_processor) is Qwen2VLImageProcessorFast, type(fast.image_processor)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        d, attn_implementation="eager", dtype=torch.float32).eval()
    ip = slow.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1, 1)
    im_end = slow.tokenizer.convert_tokens_to_ids("<|im_end|>")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = slow.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    print(f"slow: {type(slow.image_processor).__name__}, fast: {type(fast.image_processor).__name__}; "
          f"tiny-qwen, question {QUESTION!r}")
    for name in ["wide.png", "big.png", "tall.png"]:
        image = Image.open(os.path.join(args.fixtures, "images", name)).convert("RGB")
        es = slow(text=[prompt], images=[image], return_tensors="pt")
        ef = fast(text=[prompt], images=[image], return_tensors="pt")
        assert torch.equal(es["image_grid_thw"], ef["image_grid_thw"]) and torch.equal(es["input_ids"], ef["input_ids"])
        ps, pf = es["pixel_values"], ef["pixel_values"]
        diff = (ps - pf).abs()
        # back to the 0..255 scale of the resized image: (x * std + mean) * 255, per channel
        u8 = lambda p: ((p.view(-1, 3, 2, 14, 14) * std + mean) * 255).round()  # noqa: E731
        du8 = (u8(ps) - u8(pf)).abs()
        with torch.inference_mode():
            outs = {}
            for tag, e in (("slow", es), ("fast", ef)):
                lg = model(**e).logits[0]
                gen = model.generate(**e, max_new_tokens=8, do_sample=False, num_beams=1, eos_token_id=im_end,
                                     pad_token_id=slow.tokenizer.pad_token_id)
                outs[tag] = (lg, gen[0, e["input_ids"].shape[1]:].tolist())
        dl = (outs["slow"][0] - outs["fast"][0]).abs()
        print(f"{name}: {image.size[0]}x{image.size[1]} grid {es['image_grid_thw'][0].tolist()}; "
              f"pixel_values max|d| {float(diff.max()):.4f} mean|d| {float(diff.mean()):.5f}, "
              f"{float((diff > 0).float().mean()) * 100:.1f}% not bit-equal, "
              f"max|d| where the 0..255 values agree {float(diff[du8.view(diff.shape) == 0].max()):.1e} "
              f"(in 0..255 units: max {int(du8.max())}, {float((du8 > 0).float().mean()) * 100:.1f}% of values differ); "
              f"logits max|d| {float(dl.max()):.4f} (last row {float(dl[-1].max()):.4f}; logit std "
              f"{float(outs['slow'][0].std()):.2f}); "
              f"gen_ids slow {outs['slow'][1]} fast {outs['fast'][1]} {'same' if outs['slow'][1] == outs['fast'][1] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
