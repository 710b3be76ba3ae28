#!/usr/bin/env python3
"""HF reference for ViCrop's grad-att on the tiny LLaVA fixture.

ViCrop's `gradient_attention_llava` (saccharomycetes/mllms_know a64c5d5,
`llava_methods.py`:16-54), run at every layer of the tiny fixture model on the
`llava_pad_vicuna` case (its input ids and pixel values come from that case's
reference file, so the prompt is exactly the one the other tests check):

    logits = model(**inputs, output_attentions=True)      # eager attention
    loss = -CrossEntropy(logits[:, -1], argmax(logits[:, -1]))
    dA = torch.autograd.grad(loss, attentions[layer])
    grad_att = attentions[layer] * relu(dA)
    map = grad_att[0, :, -1, image tokens].mean(heads)

in float32 (ViCrop runs bfloat16; our tests compare f32 to f32).

Runs by hand with the packages of scripts/requirements-fixtures.txt:

    /work/refenv/bin/python scripts/make_vicrop_grad_fixture.py   # from the repo root, ~2 s

Output: sdrpn-llava/tests/fixtures/reference/vicrop_grad_att.safetensors with
  attention_grad_last_row  [L, H, T]  dA[0, :, -1, :] per layer
  grad_att_map             [L, P]     the head-mean map over the image tokens
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import save_sorted  # noqa: E402  (sorted metadata: identical bytes on a re-run)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = "sdrpn-llava/tests/fixtures"
CASE = "llava_pad_vicuna"


def main():
    ref = load_file(os.path.join(ROOT, "reference", f"{CASE}.safetensors"))
    with open(os.path.join(ROOT, "reference", f"{CASE}.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    model = LlavaForConditionalGeneration.from_pretrained(
        os.path.join(ROOT, "tiny-llava"), attn_implementation="eager", dtype=torch.float32
    ).eval()
    input_ids = ref["input_ids"].unsqueeze(0).long()
    pixel_values = ref["pixel_values"].unsqueeze(0)
    start = int(meta["image_token_start"])
    count = int(meta["num_image_tokens"])
    out = model(input_ids=input_ids, pixel_values=pixel_values, output_attentions=True)
    # the same forward as the reference case
    assert torch.allclose(out.logits[0, -1], ref["logits_last"], atol=1e-5)
    last = out.logits[:, -1, :]
    loss = -F.cross_entropy(last, torch.argmax(last, dim=1))
    grads = torch.autograd.grad(loss, out.attentions)
    rows, maps = [], []
    for att, grad in zip(out.attentions, grads):
        rows.append(grad[0, :, -1, :])
        weighted = att * F.relu(grad)
        maps.append(weighted[0, :, -1, start : start + count].mean(dim=0))
    tensors = {
        "attention_grad_last_row": torch.stack(rows).detach().contiguous(),
        "grad_att_map": torch.stack(maps).detach().contiguous(),
    }
    metadata = {
        "case": CASE,
        "greedy_token": str(int(torch.argmax(last))),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    path = os.path.join(ROOT, "reference", "vicrop_grad_att.safetensors")
    save_sorted(tensors, path, metadata)
    print(path, {k: tuple(v.shape) for k, v in tensors.items()})
    print("max |map|", float(tensors["grad_att_map"].abs().max()))


if __name__ == "__main__":
    main()
