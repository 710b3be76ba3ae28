#!/usr/bin/env python3
"""How far PyTorch itself lands from the f32 reference when it computes the
tiny fixture model in f16 and bf16: the yardstick for the half-precision
bounds of the GPU parity tests (sdrpn-llava/tests/common/mod.rs,
`check_half_precision_on`).

    /work/refenv/bin/python scripts/half_precision_error.py   # venv: scripts/requirements-fixtures.txt

Measured with the pinned versions (transformers 4.57.6, torch 2.9.1, CPU):
    float16:  logits relative error 1.7e-3, attention max abs error 3.1e-3
    bfloat16: logits relative error 1.3e-2, attention max abs error 2.5e-2
"""

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, LlavaForConditionalGeneration

FIXTURES = "sdrpn-llava/tests/fixtures"


def main():
    torch.set_num_threads(1)
    model_dir = f"{FIXTURES}/tiny-llava"
    ref = safe_open(f"{FIXTURES}/reference/hf_crop_raw.safetensors", "np")
    ref_logits = ref.get_tensor("logits")
    ref_attention = ref.get_tensor("lm_attentions")
    processor = AutoProcessor.from_pretrained(model_dir, use_fast=False)
    image = Image.open(f"{FIXTURES}/images/{ref.metadata()['image']}").convert("RGB")
    enc = processor(images=image, text=ref.metadata()["prompt"], return_tensors="pt")
    for dtype in (torch.float16, torch.bfloat16):
        model = LlavaForConditionalGeneration.from_pretrained(
            model_dir, attn_implementation="eager", dtype=dtype
        ).eval()
        with torch.inference_mode():
            out = model(
                input_ids=enc["input_ids"],
                pixel_values=enc["pixel_values"].to(dtype),
                output_attentions=True,
            )
        logits = out.logits[0].float().numpy()
        attention = torch.stack([a[0] for a in out.attentions]).float().numpy()
        rel = np.linalg.norm(logits - ref_logits) / np.linalg.norm(ref_logits)
        print(
            f"{str(dtype).removeprefix('torch.')}: logits relative error {rel:.2e}, "
            f"attention max abs error {np.abs(attention - ref_attention).max():.2e}"
        )


if __name__ == "__main__":
    main()
