"""The 10M-class fairseq CMLM of the speed comparison, run with fairseq's Python:

python make_bench_model.py FRESH.pt OUT.pt

FRESH.pt: a freshly initialised ``cmlm_transformer`` saved by fairseq-train (6+6 layers, d 256,
FFN 1024, ``--pred-length-offset``). Every weight matrix is multiplied by 8 (at BERT init's std
0.02 the model predicts ``<unk>`` everywhere and the adaptive stop ends every sentence after one
pass). Its length head is set to predict the source length (so that
target lengths are realistic rather than random): the last encoder layer norm gets a bias of 0.1,
which adds exactly 0.1 * d to the sum of every (zero-mean) encoder state, and the length head
keeps one non-zero row, all ones, at the class "source length + 0". The rest stays as fairseq
initialised it. Speed only: its translations mean nothing.
"""

import sys

import torch


def main(fresh: str, out: str) -> None:
    checkpoint = torch.load(fresh, map_location="cpu", weights_only=False)  # our own file
    checkpoint["last_optimizer_state"] = None
    state = checkpoint["model"]
    seen = set()
    for name, tensor in state.items():
        if tensor.dim() >= 2 and tensor.data_ptr() not in seen and "embed_length" not in name:
            seen.add(tensor.data_ptr())
            tensor.mul_(8.0)
    # the encoder's in_proj/fc copies are rebuilt by fairseq from q/k/v/fc on load
    checkpoint["model"] = state = {k: v for k, v in state.items() if not k.endswith(("_weight", "_bias"))}
    layers = checkpoint["cfg"]["model"].encoder_layers
    state[f"encoder.layers.{layers - 1}.final_layer_norm.bias"].fill_(0.1)
    length = state["decoder.embed_length.weight"]
    length.zero_()
    length[length.shape[0] // 2].fill_(1.0)
    torch.save(checkpoint, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
