"""python strip_checkpoint.py IN.pt OUT.pt (run with fairseq's Python)

Drops the optimizer state and the encoder's copies for torch's fused path
(``encoder.layers.N.{in_proj,out_proj,fc1,fc2}_{weight,bias}``; fairseq 0.12.2 rebuilds them from
q/k/v_proj, out_proj, fc1, fc2 on load), then saves again with torch.save.
"""

import re
import sys

import torch

COPIES = re.compile(r"^encoder\.layers\.\d+\.(in_proj|out_proj|fc1|fc2)_(weight|bias)$")


def main(source: str, target: str) -> None:
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)  # our own fairseq run's file
    checkpoint["last_optimizer_state"] = None
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if not COPIES.match(k)}
    torch.save(checkpoint, target)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
