"""``janus-fast convert --fairseq``: a fairseq CMLM, JANUS or transformer checkpoint as a janus_fast
checkpoint.

Supported: fairseq's ``cmlm_transformer``, the public JANUS plugin's ``janus_transformer`` and
fairseq's plain ``transformer`` (AR only, ``--task translation``; ``ar_stream="content"``) (and
their named variants such as ``*_iwslt_de_en``) with shared embeddings
(``--share-all-embeddings``), equal encoder/decoder widths, learned or sinusoidal positions. The
plugin's decoder shares every weight between its two streams under CMLM's names; its AR query
stream sits at the last visible content token's position (``query_position_offset=0``).
Everything else is refused with the reason (see ``docs/fairseq.md``).

The mapping, per name:

* ``{encoder,decoder}.embed_tokens.weight`` (equal; also ``decoder.output_projection.weight``)
  -> ``embed_tokens.weight``;
* ``{encoder,decoder}.embed_positions.weight`` rows ``pad + 1 ..`` (fairseq numbers real positions
  from ``padding_idx + 1``) -> ``embed_{source,target}_positions.weight`` rows ``0 ..``; sinusoidal
  positions are written out as a table the same way;
* attention ``q_proj`` -> ``q_proj``; ``k_proj`` and ``v_proj`` stacked -> ``kv_proj``;
  ``out_proj`` -> ``out_proj``; decoder ``encoder_attn`` -> ``cross_attn``;
* encoder ``self_attn_layer_norm``, ``final_layer_norm`` -> ``norm1``, ``norm2``; decoder
  ``self_attn_layer_norm``, ``encoder_attn_layer_norm``, ``final_layer_norm`` -> ``norm1..3``;
  ``fc1``/``fc2`` -> ``ffn.fc1``/``ffn.fc2``;
* ``decoder.embed_length.weight`` (256, d) -> ``length_embed.weight`` (zeros for a plain
  transformer, which has none).

``encoder.layers.*.{in_proj,out_proj,fc1,fc2}_{weight,bias}`` (copies fairseq 0.12 keeps for
torch's fused encoder path and rebuilds from q/k/v/fc1/fc2 on load), ``*.version`` and the sinusoidal
positions' ``_float_tensor`` are not weights of the model and are dropped.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any

import torch

from janus_fast.arguments import spelled_as_flags
from janus_fast.checkpoint import CheckpointError, replaced_directory, save_pretrained, save_tokenizer
from janus_fast.fairseq.checkpoint import fairseq_arguments, load_fairseq_checkpoint
from janus_fast.fairseq.dictionary import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_SYMBOLS,
    UNK_ID,
    FairseqTokenizer,
    check_sentencepiece_matches,
)
from janus_fast.model import ACTIVATIONS, TRAINED_OBJECTIVES, JanusConfig, JanusModel

__all__ = ["SUPPORTED_ARCHITECTURES", "config_from_arguments", "convert_state_dict", "convert_fairseq"]

# fairseq's CMLM and the public JANUS plugin's model (github.com/dropreg/JANUS, ``--user-dir janus/src``):
# the same parameter names, both streams sharing every decoder weight; and fairseq's plain
# (AR) ``transformer``, whose decoder layers have the same names too
SUPPORTED_ARCHITECTURES = ("cmlm_transformer", "janus_transformer", "transformer")
NOT_TRANSLATION_MODELS = ("transformer_lm", "transformer_align")  # prefixes that are other models
IGNORED = re.compile(
    r"^(encoder|decoder)\.(version|embed_positions\._float_tensor)$"
    r"|^encoder\.layers\.\d+\.(in_proj|out_proj|fc1|fc2)_(weight|bias)$"
)


BYTE_ORDER_MARK = "\ufeff"


def _refuse(path: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: cannot convert: {reason}")


PLAIN_ARGUMENT_TYPES = (type(None), bool, int, float, str)  # what an argument the conversion reads may hold


def _argument(args: dict[str, Any], name: str, path: str, default: Any = None) -> Any:
    """Argument ``name`` of a fairseq checkpoint (``default`` where it has none); CheckpointError
    when it holds anything but a plain value (a tensor or a list there is a damaged or crafted file)."""
    found = args.get(name, default)
    if not isinstance(found, PLAIN_ARGUMENT_TYPES):
        raise _refuse(path, f"argument {name} holds a {type(found).__name__}, expected a number, a string or a flag")
    return found


def check_stored_tensors(state: Any, path: str) -> None:
    """CheckpointError unless ``state`` (a checkpoint's ``model`` entry) maps names to dense tensors
    whose every element has its own bytes in the file: an expanded or overlapping view stores a few
    bytes for a tensor of any size, which the conversion's arithmetic would then allocate in full."""
    if not isinstance(state, dict):
        raise _refuse(path, f"its 'model' entry is a {type(state).__name__}, expected the weights by name")
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise _refuse(path, f"a weight is named {name!r} ({type(name).__name__}), expected names as strings")
        if not isinstance(tensor, torch.Tensor):
            raise _refuse(path, f"weight {name} is a {type(tensor).__name__}, expected a tensor")
        if tensor.layout != torch.strided or tensor.is_meta:
            raise _refuse(path, f"weight {name} is a {tensor.layout} tensor without values, expected a dense one")
        stored = tensor.untyped_storage().nbytes()
        if tensor.numel() * tensor.element_size() > stored or any(
            stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape)
        ):
            raise _refuse(
                path,
                f"weight {name} {tuple(tensor.shape)} is a view that repeats its {stored} stored bytes "
                "(expanded or overlapping), not a saved weight",
            )


# JanusConfig's sizes and the fairseq arguments they come from
SIZE_ARGUMENTS = {
    "d_model": "encoder_embed_dim",
    "num_heads": "encoder_attention_heads",
    "ffn_dim": "encoder_ffn_embed_dim",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "max_source_positions": "max_source_positions",
    "max_target_positions": "max_target_positions",
}


def config_from_arguments(args: dict[str, Any], vocab_size: int, path: str = "checkpoint") -> JanusConfig:
    """The JanusConfig of a fairseq CMLM model from its arguments; CheckpointError for anything
    the model cannot represent."""
    arch = str(args.get("arch") or args.get("_name") or "")
    other = any(arch == name or arch.startswith(name + "_") for name in NOT_TRANSLATION_MODELS)
    if other or not any(arch == name or arch.startswith(name + "_") for name in SUPPORTED_ARCHITECTURES):
        raise _refuse(path, f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

    def value(name: str, default: Any = None) -> Any:
        return _argument(args, name, path, default)

    def integer(name: str) -> int:  # a size argument: an integer (3.0 is one; 2.7, None, "3" are not)
        found = value(name)
        if isinstance(found, bool) or not isinstance(found, (int, float)) or found != int(found):
            raise _refuse(path, f"argument {name} is {found!r}, expected an integer")
        return int(found)

    def real(name: str, default: float) -> float:  # a rate argument: a number
        found = value(name, default)
        if isinstance(found, bool) or not isinstance(found, (int, float)):
            raise _refuse(path, f"argument {name} is {found!r}, expected a number")
        return float(found)

    pairs = [("encoder_embed_dim", "decoder_embed_dim"), ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim")]
    pairs += [("encoder_attention_heads", "decoder_attention_heads")]
    pairs += [("encoder_normalize_before", "decoder_normalize_before"), ("encoder_learned_pos", "decoder_learned_pos")]
    for encoder_name, decoder_name in pairs:
        if bool(value(encoder_name)) != bool(value(decoder_name)) or value(encoder_name) != value(decoder_name):
            raise _refuse(
                path, f"{encoder_name}={value(encoder_name)} differs from {decoder_name}={value(decoder_name)}"
            )
    refused = [
        ("share_all_embeddings", lambda v: not v, "separate source/target embeddings (use --share-all-embeddings)"),
        ("layernorm_embedding", bool, "a layer norm on the embeddings"),
        ("src_embedding_copy", bool, "source embedding copy"),
        ("adaptive_softmax_cutoff", bool, "an adaptive softmax"),
        ("adaptive_input", bool, "adaptive input embeddings"),
        ("no_decoder_final_norm", bool, "a pre-norm decoder without its final norm"),
        ("cross_self_attention", bool, "cross+self-attention"),
        ("no_cross_attention", bool, "no cross-attention"),
    ]
    for name, bad, what in refused:
        if bad(value(name)):
            raise _refuse(path, f"{what} ({name}={value(name)!r}) is not supported")
    if value("ngram_predictor", 1) != 1:
        raise _refuse(path, f"ngram_predictor={value('ngram_predictor')} is not supported")
    if value("decoder_output_dim", value("decoder_embed_dim")) != value("decoder_embed_dim"):
        raise _refuse(path, "decoder_output_dim != decoder_embed_dim (an output projection) is not supported")
    activation = value("activation_fn", "relu")
    if activation not in ACTIVATIONS:
        raise _refuse(path, f"activation_fn {activation!r} is not supported ({sorted(ACTIVATIONS)})")
    if value("pad", PAD_ID) != PAD_ID or value("eos", EOS_ID) != EOS_ID or value("unk", UNK_ID) != UNK_ID:
        raise _refuse(path, "special ids other than fairseq's defaults (bos 0, pad 1, eos 2, unk 3)")
    plain = not arch.startswith(("cmlm_transformer", "janus_transformer"))  # fairseq's AR transformer
    if plain and value("task", "translation") != "translation":
        raise _refuse(path, f"a transformer trained with task {value('task')!r} (supported: translation)")
    objective = "ar" if plain else "janus" if arch.startswith("janus_transformer") else "cmlm"
    sizes = {name: integer(argument) for name, argument in SIZE_ARGUMENTS.items()}
    for name, argument in SIZE_ARGUMENTS.items():
        if sizes[name] < 1:
            raise _refuse(path, f"argument {argument} is {sizes[name]}, expected >= 1")
    if sizes["d_model"] % sizes["num_heads"]:
        raise _refuse(
            path,
            f"encoder_embed_dim {sizes['d_model']} is not divisible by encoder_attention_heads {sizes['num_heads']}",
        )
    dropout, attention_dropout = real("dropout", 0.1), real("attention_dropout", 0.0)
    try:
        with spelled_as_flags(False):  # convert has no --d-model: what is wrong named as the model's field
            return JanusConfig(
                vocab_size=vocab_size,
                **sizes,
                dropout=dropout,
                attention_dropout=attention_dropout,
                num_length_classes=256,
                length_offset=bool(value("pred_length_offset", False)),
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                mask_id=UNK_ID,
                normalize_before=bool(value("encoder_normalize_before", False)),
                final_norms=bool(value("encoder_normalize_before", False)),
                activation=activation,
                scale_embedding=not bool(value("no_scale_embedding", False)),
                # translation_lev / janus_translation prepend <bos> to sources, translation does not; all append <eos>
                source_bos=not plain,
                source_eos=True,
                # the plain transformer predicts from its (causal) content stream, starting from </s>
                ar_stream="content" if plain else "query",
                ar_start="eos" if plain else "bos",
                # the plugin's AR query stream sits at the position of the last visible content token
                query_position_offset=0 if arch.startswith("janus_transformer") else 1,
                # what trained it, as janus-fast train records it: decoding refuses the side it never trained
                extra={"converted_from": "fairseq", "fairseq_arch": arch, TRAINED_OBJECTIVES: [objective]},
            )
    except ValueError as error:  # a value no JanusConfig takes (a dropout of 2, say)
        raise _refuse(path, f"the arguments make no valid model: {error}") from None


def _floating(tensor: torch.Tensor, name: str, path: str) -> torch.Tensor:
    """``tensor`` if it holds real floating-point weights; CheckpointError otherwise (integer, bool or
    complex values would convert to other numbers without a word)."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        found = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise _refuse(path, f"weight {name} holds {found} values, expected floating-point weights")
    return tensor


def sinusoidal_positions(num_positions: int, dim: int, padding_idx: int) -> torch.Tensor:
    """fairseq's sinusoidal table for real positions ``padding_idx + 1 ..``: (num_positions, dim),
    half sines then half cosines of position * 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    positions = torch.arange(padding_idx + 1, padding_idx + 1 + num_positions, dtype=torch.float)
    angles = positions[:, None] * frequencies[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1, dtype=table.dtype)], dim=1)
    return table


def _positions(state: dict[str, torch.Tensor], side: str, config: JanusConfig, args: dict, path: str) -> torch.Tensor:
    """The (max positions, d) table of ``side`` ("encoder" | "decoder") with row i = position i."""
    count = config.max_source_positions if side == "encoder" else config.max_target_positions
    if _argument(args, "no_token_positional_embeddings", path):
        return torch.zeros(count, config.d_model, dtype=torch.float32)
    if not _argument(args, f"{side}_learned_pos", path):
        return sinusoidal_positions(count, config.d_model, PAD_ID)
    table = state.get(f"{side}.embed_positions.weight")
    if table is None or table.ndim != 2 or table.shape[0] < PAD_ID + 1 + count:
        raise _refuse(path, f"{side}.embed_positions.weight missing or shorter than {PAD_ID + 1 + count} rows")
    return _floating(table, f"{side}.embed_positions.weight", path)[PAD_ID + 1 : PAD_ID + 1 + count].float()


def convert_state_dict(
    state: dict[str, torch.Tensor], config: JanusConfig, args: dict[str, Any], path: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """fairseq CMLM weights -> the state dict of ``JanusModel(config)``; CheckpointError naming any
    weight left over, missing or of the wrong shape."""
    state = {name: tensor for name, tensor in state.items() if not IGNORED.match(name)}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise _refuse(path, f"weight {name} is missing")
        used.add(name)
        return _floating(state[name], name, path).float()

    embed = take("encoder.embed_tokens.weight")
    for tied in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        if tied in state and not torch.equal(shared := take(tied), embed):
            for name, tensor in (("encoder.embed_tokens.weight", embed), (tied, shared)):
                if not torch.isfinite(tensor).all():  # NaN equals nothing, itself neither: not a sharing question
                    raise _refuse(path, f"{name} holds non-finite values (nan or inf): the model is broken")
            raise _refuse(path, f"{tied} differs from encoder.embed_tokens.weight (embeddings not shared)")
    if config.has_nar:
        length_embed = take("decoder.embed_length.weight")
    else:  # a plain transformer has no length head; the model's stays zero (it never runs)
        length_embed = torch.zeros(config.num_length_classes, config.d_model, dtype=torch.float32)
    out = {"embed_tokens.weight": embed, "length_embed.weight": length_embed}
    out["embed_source_positions.weight"] = _positions(state, "encoder", config, args, path)
    out["embed_target_positions.weight"] = _positions(state, "decoder", config, args, path)
    used.update(name for name in ("encoder.embed_positions.weight", "decoder.embed_positions.weight") if name in state)

    def attention(source: str, target: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{target}.q_proj.{kind}"] = take(f"{source}.q_proj.{kind}")
            key, value = take(f"{source}.k_proj.{kind}"), take(f"{source}.v_proj.{kind}")
            if key.shape != value.shape or key.ndim == 0:  # stacked below: one must be the other's shape
                raise _refuse(
                    path,
                    f"{source}.k_proj.{kind} {tuple(key.shape)} and {source}.v_proj.{kind} {tuple(value.shape)} "
                    "differ in shape (or hold one number)",
                )
            out[f"{target}.kv_proj.{kind}"] = torch.cat([key, value])
            out[f"{target}.out_proj.{kind}"] = take(f"{source}.out_proj.{kind}")

    def copy(source: str, target: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{target}.{kind}"] = take(f"{source}.{kind}")

    for side, layers, norms in (
        ("encoder", config.encoder_layers, ("self_attn_layer_norm", "final_layer_norm")),
        ("decoder", config.decoder_layers, ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")),
    ):
        for i in range(layers):
            source, target = f"{side}.layers.{i}", f"{side}_layers.{i}"
            attention(f"{source}.self_attn", f"{target}.self_attn")
            if side == "decoder":
                attention(f"{source}.encoder_attn", f"{target}.cross_attn")
            for number, norm in enumerate(norms, 1):
                copy(f"{source}.{norm}", f"{target}.norm{number}")
            copy(f"{source}.fc1", f"{target}.ffn.fc1")
            copy(f"{source}.fc2", f"{target}.ffn.fc2")
        if config.final_norms:
            copy(f"{side}.layer_norm", f"{side}_norm")
    left_over = sorted(set(state) - used)
    if left_over:
        raise _refuse(path, f"weights this model has no place for: {left_over[:8]}")
    return out


def new_folder_problem(output: str) -> str | None:
    """Why ``output`` cannot take a converted checkpoint (an empty name, or a file or non-empty folder
    there: converting never overwrites), or None."""
    if not output:
        return "the output folder's name is empty: name the checkpoint folder to write"
    if os.path.lexists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        return f"{output} exists and is not an empty folder: converting writes a new checkpoint folder"
    return None


def convert_fairseq(
    checkpoint_path: str, dict_path: str, output: str, bpe: str | None = None, bpe_path: str | None = None
) -> JanusModel:
    """Convert ``checkpoint_path`` (read without executing pickled code) with its dictionary (and
    BPE) into the checkpoint directory ``output`` (a new or empty folder: an existing checkpoint is
    never overwritten; the folder appears whole or not at all); returns the converted model."""
    problem = new_folder_problem(output)
    if problem is not None:
        raise CheckpointError(problem)
    checkpoint = load_fairseq_checkpoint(checkpoint_path)
    args = fairseq_arguments(checkpoint, checkpoint_path)
    try:
        tokenizer = FairseqTokenizer.from_files(dict_path, bpe, bpe_path)
        if tokenizer.bpe == "sentencepiece":
            check_sentencepiece_matches(tokenizer.symbols, tokenizer.bpe_data)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{dict_path}: unusable dictionary or BPE ({error})") from error
    first = tokenizer.symbols[len(SPECIAL_SYMBOLS)] if len(tokenizer.symbols) > len(SPECIAL_SYMBOLS) else ""
    if first.startswith(BYTE_ORDER_MARK):
        warnings.warn(
            f"{dict_path} opens with a byte-order mark: like fairseq, the converter keeps it as part of the first "
            f"symbol ({first!r}), so that symbol never matches input text; if "
            "the model was trained on this file it saw the same, otherwise remove the mark and convert again",
            stacklevel=2,
        )
    state = checkpoint["model"]
    check_stored_tensors(state, checkpoint_path)
    embed = state.get("encoder.embed_tokens.weight")
    if embed is None:
        raise _refuse(checkpoint_path, "no encoder.embed_tokens.weight")
    if embed.ndim != 2:
        shape = tuple(embed.shape)
        raise _refuse(checkpoint_path, f"encoder.embed_tokens.weight has shape {shape}, expected (vocabulary, d)")
    if embed.shape[0] != tokenizer.vocab_size:
        raise CheckpointError(
            f"{dict_path}: {tokenizer.vocab_size} symbols (with the 4 specials) but the checkpoint's embeddings "
            f"have {embed.shape[0]} rows: not this model's dictionary"
        )
    config = config_from_arguments(args, tokenizer.vocab_size, checkpoint_path)
    # the shapes the arguments ask for, on the meta device (no memory): arguments edited to ask for a
    # huge model are refused by the shape check below instead of being allocated first
    with torch.device("meta"):
        expected = JanusModel(config).state_dict()
    weights = convert_state_dict(state, config, args, checkpoint_path)
    wrong = [
        f"{n} {tuple(t.shape)} != {tuple(expected[n].shape)}"
        for n, t in weights.items()
        if t.shape != expected[n].shape
    ]
    missing = sorted(set(expected) - set(weights))
    if wrong or missing:
        raise _refuse(checkpoint_path, f"shape mismatches {wrong[:5]}, missing {missing[:5]}")
    model = JanusModel(config)
    model.load_state_dict(weights)
    model.eval()
    with replaced_directory(output) as staging:  # a failed write leaves nothing behind (and no half checkpoint)
        save_pretrained(model, staging)
        save_tokenizer(tokenizer, staging)  # with its digest in config.json
    return model
