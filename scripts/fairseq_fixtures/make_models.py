"""The fixture checkpoints, run with fairseq's Python (torch 2.4.1):

python make_models.py TRAINED.pt FRESH_PRENORM.pt OUT_DIR [SCALE]

* ``trained.pt``: TRAINED without its optimizer state (otherwise unchanged); it is little trained
  (1,600 updates on 2,000 pairs) and says "a man <unk> ..." to many sentences;
* ``prenorm.pt``: FRESH_PRENORM (a freshly initialised pre-norm variant) with every weight matrix
  (positions included) multiplied by SCALE, so that the argmax outputs differ between sentences
  and positions (at BERT init's std 0.02 they hardly do).

The encoder's ``in_proj_*`` / ``*_weight`` copies (fairseq rebuilds them from q/k/v/fc on load) are
dropped from ``prenorm.pt``; ``trained.pt`` keeps them.
"""

import re
import sys

import torch

COPIES = re.compile(r"^encoder\.layers\.\d+\.(in_proj|out_proj|fc1|fc2)_(weight|bias)$")


def load(path: str) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # our own files
    checkpoint["last_optimizer_state"] = None
    return checkpoint


def each_matrix(state: dict):
    """Every weight matrix once (tied embeddings share a storage)."""
    seen = set()
    for name, tensor in state.items():
        if tensor.dim() < 2 or COPIES.match(name):
            continue
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        yield name, tensor


def main(trained: str, fresh_prenorm: str, out: str, scale: float = 8.0) -> None:
    torch.save(load(trained), f"{out}/trained.pt")
    checkpoint = load(fresh_prenorm)
    for _, tensor in each_matrix(checkpoint["model"]):
        tensor.mul_(scale)
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if not COPIES.match(k)}
    torch.save(checkpoint, f"{out}/prenorm.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4], *[float(x) for x in sys.argv[4:5]])
