"""Training: loss goes down, resume is exact, bf16 does not change the loss, DDP runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, random_model, tiny_train_config

from janus_fast.data import read_lines
from janus_fast.training.losses import LossWeights, compute_loss
from janus_fast.training.train import train


def train_losses(output_dir: str) -> dict[int, float]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return {r["update"]: r["loss"] for r in records if r["type"] == "train"}


@pytest.mark.parametrize("objective", ["janus", "ar", "cmlm"])
def test_resume_reproduces_uninterrupted_run(corpus_dir, tmp_path, objective):
    straight = str(tmp_path / "straight")
    train(tiny_train_config(corpus_dir, straight, objective=objective, max_updates=6))
    interrupted = str(tmp_path / "interrupted")
    train(tiny_train_config(corpus_dir, interrupted, objective=objective, max_updates=3))
    # a kill after the save at update 3 leaves exactly this on disk; restart the same command
    train(tiny_train_config(corpus_dir, interrupted, objective=objective, max_updates=6))
    expected, resumed = train_losses(straight), train_losses(interrupted)
    assert sorted(resumed) == list(range(1, 7))
    for update in range(1, 7):
        assert resumed[update] == pytest.approx(expected[update], rel=1e-6), update


def valid_records(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [record for record in map(json.loads, handle) if record["type"] == "valid"]


def test_a_start_stopped_within_an_epoch_validates_its_last_updates(corpus_dir, tmp_path):
    """``--max-updates`` (or ``--max-minutes``) stopping a start inside an epoch validates the
    model there: a run shorter than one epoch has a ``best/``, and the updates after the last
    epoch end are scored. A stop at an epoch's end validates once, as before."""
    from janus_fast.checkpoint import load_pretrained

    out = str(tmp_path / "run")
    state = train(tiny_train_config(corpus_dir, out, max_updates=3, valid_limit=5))
    assert state.epoch == 0 and state.batch_in_epoch == 3  # the tiny corpus has more than 3 batches an epoch
    [record] = valid_records(out)
    # epoch 1 (as the train records and the progress bar number it), 3 of its batches in
    assert (record["update"], record["epoch"], record["batch_in_epoch"]) == (3, 1, 3)
    saved = torch.load(os.path.join(out, "best", "train_state.pt"), weights_only=False)["state"]
    assert saved["update"] == 3 and saved["best_bleu"] == pytest.approx(-record["loss"])
    best, last = load_pretrained(os.path.join(out, "best")), load_pretrained(os.path.join(out, "last"))
    assert all(torch.equal(tensor, last.state_dict()[name]) for name, tensor in best.state_dict().items())

    assert train(tiny_train_config(corpus_dir, out, max_updates=3, valid_limit=5)).update == 3  # nothing to do
    assert len(valid_records(out)) == 1  # and nothing validated twice
    state = train(tiny_train_config(corpus_dir, out, max_updates=None, valid_limit=5))  # to the epoch's end
    records = valid_records(out)
    assert [(r["update"], r["epoch"]) for r in records] == [(3, 1), (state.update, 1)]
    assert "batch_in_epoch" not in records[1]


def test_every_process_stops_at_the_time_limit_when_one_does():
    """With several processes, one past its ``--max-minutes`` deadline stops all of them (alone it
    would leave the others waiting in the gradient sum)."""
    import time

    from janus_fast.training.train import within_time_limit

    class Processes:
        world_size = 2

        def __init__(self, others_past: float) -> None:
            self.others_past = others_past

        def all_reduce_sum(self, value: float) -> float:
            return value + self.others_past

    later, earlier = time.perf_counter() + 600, time.perf_counter() - 1
    assert within_time_limit(Processes(0.0), later)
    assert not within_time_limit(Processes(1.0), later)  # another process's deadline has passed
    assert not within_time_limit(Processes(0.0), earlier)
    assert within_time_limit(Processes(1.0), float("inf"))  # no limit: no collective call at all


def test_keep_every_keeps_the_model_for_averaging(corpus_dir, tmp_path):
    """``--keep-every 2``: OUT/saves/u000002, u000004, u000006, each the model at that update (the
    last one equal to ``last/``, written at the same update), loadable and averageable."""
    from janus_fast.checkpoint import average_checkpoints, load_pretrained

    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=6, keep_every=2))
    saves = sorted(os.listdir(os.path.join(out, "saves")))
    assert saves == ["u000002", "u000004", "u000006"]
    assert not os.path.exists(os.path.join(out, "saves", "u000006", "train_state.pt"))
    kept = [load_pretrained(os.path.join(out, "saves", name)).state_dict() for name in saves]
    last = load_pretrained(os.path.join(out, "last")).state_dict()
    for name, tensor in last.items():
        assert torch.equal(kept[2][name], tensor), name
    assert any(not torch.equal(kept[0][name], kept[1][name]) for name in last)
    mean = average_checkpoints([os.path.join(out, "saves", name) for name in saves]).state_dict()
    name = next(n for n in last if last[n].is_floating_point() and last[n].dim() == 2)
    expected = sum(state[name].double() for state in kept) / 3
    assert torch.allclose(mean[name].double(), expected, atol=1e-6)


def test_loss_decreases(corpus_dir, tmp_path):
    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=40, epochs=5, lr=3e-3, warmup_updates=5, log_every=5))
    losses = train_losses(out)
    assert losses[40] < losses[5] - 0.5


def test_bf16_autocast_matches_fp32_loss():
    model = random_model()
    model.train(False)
    from test_model import make_batch

    src, src_lengths, tgt, tgt_lengths, masked = make_batch()
    length_targets = model.length_targets(tgt_lengths, src_lengths)
    losses = {}
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(src, src_lengths, tgt, tgt_lengths, masked, "janus")
        losses[bf16], _ = compute_loss(out, tgt, tgt_lengths, length_targets, "janus", LossWeights())
    assert float(losses[True]) == pytest.approx(float(losses[False]), rel=0.03)


@pytest.mark.slow
def run_two_processes(corpus_dir: str, out: str, *options: str, port: int = 29533) -> subprocess.CompletedProcess:
    """``janus-fast train`` of a tiny model under ``torchrun --nproc_per_node 2`` (fp32)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += ["-m", "janus_fast.cli", "train", "--output-dir", out, "--data-dir", corpus_dir, "--vocab-size", "300"]
    command += ["--d-model", "32", "--ffn-dim", "64", "--encoder-layers", "1", "--decoder-layers", "1"]
    command += ["--log-every", "1", "--no-valid-bleu", "--no-progress", "--precision", "fp32", "--threads", "1"]
    return subprocess.run([*command, *options], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_two_process_ddp_training(corpus_dir, tmp_path):
    """Two processes train, and a run killed and resumed continues exactly as the one that was not:
    the same losses and weights. Both ranks' masks and dropout come from their own generators, so
    both must come back (before: only rank 0's were saved and every rank took them on resume, so the
    resumed run drifted from the first update after the resume)."""
    from safetensors.torch import load_file

    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    common = ("--max-tokens", "600", "--save-every", "2", "--dropout", "0.1")
    result = run_two_processes(corpus_dir, full, *common, "--max-updates", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    assert os.path.exists(os.path.join(full, "last", "model.safetensors"))
    for updates in ("3", "6"):
        result = run_two_processes(corpus_dir, resumed, *common, "--max-updates", updates)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    assert sorted(train_losses(full)) == [1, 2, 3, 4, 5, 6]
    assert train_losses(resumed) == train_losses(full)
    first, second = (load_file(os.path.join(run, "last", "model.safetensors")) for run in (full, resumed))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_two_processes_refuse_fewer_batches_than_processes(corpus_dir, tmp_path):
    """Each process takes the same number of whole batches: with one batch per epoch, two processes
    trained nothing and saved the untrained model as best/ and last/, without a word."""
    result = run_two_processes(corpus_dir, str(tmp_path / "run"), "--max-tokens", "100000000", "--epochs", "2")
    assert result.returncode != 0
    assert "fewer than the 2 processes" in result.stderr + result.stdout
    assert not os.path.exists(tmp_path / "run" / "best") and not os.path.exists(tmp_path / "run" / "last")


def test_threads_are_shared_by_the_processes_of_this_machine(monkeypatch):
    """Divided by torchrun's LOCAL_WORLD_SIZE (this machine's ranks), among the CPUs this process may
    use; before: by WORLD_SIZE (ranks on every machine) and among all the machine's CPUs."""
    from janus_fast.distributed import DistributedContext

    context = DistributedContext()
    cpus = len(os.sched_getaffinity(0))
    assert context.threads_per_process() == cpus
    context.local_world_size = 2
    assert context.threads_per_process() == max(1, cpus // 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert context.threads_per_process() == 1


def test_kill_during_checkpoint_swap_resumes_from_previous(corpus_dir, tmp_path):
    """A kill after `last` was moved aside but before the new one was renamed into place."""
    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=3))
    last = os.path.join(out, "last")
    os.replace(last, last + ".old")
    os.makedirs(last + ".tmp")  # a half-written new checkpoint
    state = train(tiny_train_config(corpus_dir, out, max_updates=6))
    assert state.update == 6
    assert sorted(train_losses(out)) == [1, 2, 3, 4, 5, 6]
    assert not os.path.exists(last + ".old") and not os.path.exists(last + ".tmp")


def test_symmetric_kl_against_direct_formula():
    from janus_fast.training.losses import symmetric_kl

    generator = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(5, 11, generator=generator), -1)
    log_q = torch.log_softmax(torch.randn(5, 11, generator=generator), -1)
    p, q = log_p.exp(), log_q.exp()
    kl_pq = (p * (log_p - log_q)).sum(-1)
    kl_qp = (q * (log_q - log_p)).sum(-1)
    expected = (0.5 * (kl_pq + kl_qp)).mean()
    torch.testing.assert_close(symmetric_kl(log_p, log_q), expected)
    assert float(symmetric_kl(log_p, log_p)) == 0.0


@pytest.mark.slow
def test_default_model_recipe_runs_and_resumes(corpus_dir, tmp_path):
    """scripts/train_default_model.sh end to end at a few updates per stage (the shipped model's
    architecture, a small vocabulary): every stage's output, the saves the averages read, and a
    rerun that redoes nothing."""
    from janus_fast.checkpoint import read_config

    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    for language in ("de", "en"):
        shutil.copy(data / f"val.{language}", data / f"test_2016_flickr.{language}")
    runs = tmp_path / "runs"
    env = dict(os.environ, DATA_DIR=str(data), RUNS=str(runs), THREADS="1", VOCAB_SIZE="300")
    env.update(TEACHER_UPDATES="2", STUDENT_UPDATES="4", BRANCH_UPDATES="2", MIX_UPDATES="2", KEEP="1")
    env.update(LENGTH_BONUSES="0 0.5 5")
    script = os.path.join(REPO_ROOT, "scripts", "train_default_model.sh")
    # a safety net only: about 3 minutes on a quiet 2-core machine, 7 beside a full test run
    first = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=3600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(os.listdir(runs / "student" / "saves")) == ["u000001", "u000002", "u000003", "u000004"]
    assert sorted(os.listdir(runs / "branch" / "saves")) == ["u000001", "u000002"]
    assert sorted(os.listdir(runs / "mix" / "saves")) == ["u000001", "u000002"]
    for bf16_name, fp32_name in (("model", "model_fp32"), ("model_mix", "model_mix_fp32")):
        bf16, fp32 = (os.path.getsize(runs / name / "model.safetensors") for name in (bf16_name, fp32_name))
        assert bf16 < 0.6 * fp32  # the bf16 export of the average
    assert first.stdout.count("test_2016_flickr --mode") == 4
    # stage 8's corpus: the training sources twice, the v3 targets then the references
    train_de, train_en = (read_lines(str(runs / "data_mix" / f"train.{lang}.gz")) for lang in ("de", "en"))
    sources, references = read_lines(str(data / "train.de")), read_lines(str(data / "train.en"))
    assert train_de == sources + sources
    assert train_en == read_lines(str(runs / "distill3.en.gz")) + references
    sweep = (runs / "length_bonus.txt").read_text().splitlines()  # stage 7: the bonus of the best val mean
    means = {line.split()[3].rstrip(","): float(line.split()[-1]) for line in sweep if "mean" in line}
    assert list(means) == ["0", "0.5", "5"]
    assert sweep[-1] == max(means, key=lambda bonus: (means[bonus], -list(means).index(bonus)))
    assert read_config(str(runs / "model"))["model"]["length_bonus"] == float(sweep[-1])
    stamps = {
        name: os.stat(runs / name).st_mtime_ns
        for name in ("distill1.en.gz", "distill2.en.gz", "length_bonus.txt", "model", "distill3.en.gz", "model_mix")
    }
    again = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=3600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: os.stat(runs / name).st_mtime_ns for name in stamps} == stamps


def test_training_bounds_the_onednn_cache_unless_the_user_set_it(monkeypatch):
    """oneDNN's per-shape primitive cache grew training's memory by ~10 MB per update: train() turns it
    off before the first primitive, keeping a capacity the user chose; freeing the heap's free pages
    is safe to call at any time."""
    from janus_fast.training.train import bound_allocator_caches, return_free_memory

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    bound_allocator_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    bound_allocator_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    return_free_memory()


def test_a_tokenizer_left_by_a_killed_start_is_reused_only_for_the_same_options(corpus_dir, tmp_path):
    """OUT/spm.model outlives a run killed before its first save: a new start with other tokenizer
    options (or other data) is refused instead of silently training on the old tokenizer; the same
    options reuse it."""
    from janus_fast.training.train import TOKENIZER_RECORD_NAME, train

    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=0))  # the tokenizer only, as a killed start leaves it
    assert os.path.exists(os.path.join(out, "spm.model")) and os.path.exists(os.path.join(out, TOKENIZER_RECORD_NAME))
    before = open(os.path.join(out, "spm.model"), "rb").read()
    for change in ({"tokenizer_type": "char", "vocab_size": 60}, {"vocab_size": 200}, {"train_limit": 50}):
        with pytest.raises(ValueError, match="was made for other options or data"):
            train(tiny_train_config(corpus_dir, out, max_updates=0, **change))
    assert open(os.path.join(out, "spm.model"), "rb").read() == before
    train(tiny_train_config(corpus_dir, out, max_updates=2))  # the same options: reused, trains


def test_a_run_resumes_with_as_many_processes_as_it_had():
    """The saved position in an epoch counts each process's batches: another process count would
    repeat or skip data, so it is refused naming the counts."""
    from janus_fast.training.train import TrainConfig, check_resumable

    config = TrainConfig(data_dir="d")
    with pytest.raises(ValueError, match=r"processes 2 -> 1 \(torchrun"):
        check_resumable({"processes": 2}, config, {"processes": 1})
    check_resumable({"processes": 2}, config, {"processes": 2})
    check_resumable({}, config, {"processes": 1})  # a run saved before the count was recorded


def test_a_resume_with_other_validation_options_starts_a_new_best(corpus_dir, tmp_path):
    """BLEU and minus the loss (or BLEU of other decodings) do not compare: resumed with other
    validation options, the saved best score is dropped with a warning and the next validation
    becomes the best (before, a loss never beat a BLEU of 0 and best/ stayed the first epoch's)."""
    import json

    from janus_fast.training.train import train

    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, epochs=1, max_updates=None, valid_bleu=True, valid_limit=5))
    with pytest.warns(UserWarning, match="the validation score is now minus the validation loss"):
        train(tiny_train_config(corpus_dir, out, epochs=2, max_updates=None, valid_bleu=False, valid_limit=5))
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"valid"' in line]
    assert [r["epoch"] for r in records] == [1, 2] and "bleu" not in records[1]
    best = json.loads(json.dumps(torch.load(os.path.join(out, "best", "train_state.pt"), weights_only=False)["state"]))
    assert best["epoch"] == 2 and best["best_bleu"] == pytest.approx(-records[1]["loss"])


def test_a_tokenizer_swapped_in_the_run_folder_is_refused(corpus_dir, tmp_path):
    """OUT/spm.model replaced before a resume (the weights were trained on the old one), or found
    without the record of a run that made it on a fresh start: refused, naming the file."""
    import shutil

    from janus_fast.training.train import TOKENIZER_RECORD_NAME, train

    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    train(tiny_train_config(corpus_dir, first, max_updates=3))
    train(tiny_train_config(corpus_dir, second, max_updates=3, vocab_size=200))
    shutil.copyfile(os.path.join(second, "spm.model"), os.path.join(first, "spm.model"))
    with pytest.raises(ValueError, match="differs from the tokenizer of the run's last checkpoint"):
        train(tiny_train_config(corpus_dir, first, max_updates=6))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copyfile(os.path.join(second, "spm.model"), fresh / "spm.model")
    with pytest.raises(ValueError, match=f"is not a tokenizer this run made .*{TOKENIZER_RECORD_NAME}"):
        train(tiny_train_config(corpus_dir, str(fresh), max_updates=2))


def test_a_time_limit_shorter_than_one_update_still_trains_one_and_saves(corpus_dir, tmp_path):
    """``--max-minutes`` counts from the first update of a start: a limit that has passed before it
    still gives that update and its save (not "done: 0 updates" and no ``last/``)."""
    out = str(tmp_path / "run")
    state = train(tiny_train_config(corpus_dir, out, max_updates=6, max_minutes=1e-9))
    assert state.update == 1
    assert os.path.exists(os.path.join(out, "last", "train_state.pt"))
    state = train(tiny_train_config(corpus_dir, out, max_updates=6, max_minutes=1e-9))  # resumed: one more
    assert state.update == 2


@pytest.mark.parametrize("seed", [2**31, -(2**31) - 1, 99999999999999999999])
def test_a_seed_out_of_range_is_refused_before_any_work(corpus_dir, tmp_path, seed):
    with pytest.raises(ValueError, match="seed must be in"):
        train(tiny_train_config(corpus_dir, str(tmp_path / "run"), seed=seed))
    assert not os.path.exists(tmp_path / "run" / "spm.model")


def test_a_kill_between_the_kept_save_and_last_does_not_lose_the_kept_save(corpus_dir, tmp_path, monkeypatch):
    """``--keep-every``: the kept save is written before ``last/`` records its update, so a kill in
    between resumes from the save before and writes it (the other order lost it for good)."""
    from janus_fast.training import train as train_module

    out = str(tmp_path / "run")
    original = train_module.Run.checkpoint

    def killed_at_update_4(self, directory):  # noqa: ANN001, ANN202
        if self.state.update == 4 and directory == self.last_dir:
            raise KeyboardInterrupt  # the process dies here
        return original(self, directory)

    monkeypatch.setattr(train_module.Run, "checkpoint", killed_at_update_4)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(corpus_dir, out, max_updates=6, save_every=1, keep_every=2))
    monkeypatch.setattr(train_module.Run, "checkpoint", original)
    train(tiny_train_config(corpus_dir, out, max_updates=6, save_every=1, keep_every=2))
    assert sorted(os.listdir(os.path.join(out, "saves"))) == ["u000002", "u000004", "u000006"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"objective": "ar", "weights": LossWeights(length=5.0)},
            "--weights-length applies to --objective janus and cmlm",
        ),
        (
            {"objective": "ar", "weights": LossWeights(kl_ar_nar=2.0)},
            "--weights-kl-ar-nar applies to --objective janus",
        ),
        ({"objective": "cmlm", "weights": LossWeights(detach_ar_in_kl=True)}, "--weights-detach-ar-in-kl"),
        ({"objective": "ar", "masking": "uniform"}, "--masking applies"),
        ({"objective": "ar", "valid_mode": "nar", "valid_bleu": True}, "does not train that side"),
        ({"objective": "cmlm", "valid_mode": "ar", "valid_bleu": True}, "does not train that side"),
        (
            {"objective": "janus", "valid_mode": "ar", "valid_iterations": 8, "valid_bleu": True},
            "--valid-iterations applies to NAR",
        ),
        ({"valid_bleu": False, "valid_mode": "nar"}, "--valid-mode sets the validation BLEU's decoding"),
        ({"valid_bleu": False, "valid_iterations": 7}, "--valid-iterations sets the validation BLEU's decoding"),
    ],
)
def test_options_the_objective_never_reads_are_refused(corpus_dir, tmp_path, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_train_config(corpus_dir, str(tmp_path / "run"), **options)


@pytest.mark.parametrize(("objective", "refused"), [("ar", ("nar", "spec")), ("cmlm", ("ar", "spec")), ("janus", ())])
def test_a_model_decodes_only_with_the_sides_its_objective_trained(corpus_dir, tmp_path, objective, refused):
    """The objectives that trained a model are saved with it (config.json, model.extra); decoding
    refuses a side none of them trained (noise), and a warm start adds its objective to the record."""
    from janus_fast import Translator

    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, objective=objective, max_updates=2))
    translator = Translator.from_pretrained(os.path.join(out, "last"))
    assert translator.model.config.extra["trained_objectives"] == [objective]
    for mode in ("ar", "nar", "spec"):
        if mode in refused:
            with pytest.raises(ValueError, match="was never trained"):
                translator.translate(["Ein Hund."], mode=mode)
        else:
            assert len(translator.translate(["Ein Hund."], mode=mode)) == 1
    if objective == "ar":  # trained on with janus: both sides now
        warm = str(tmp_path / "warm")
        train(
            tiny_train_config(corpus_dir, warm, objective="janus", max_updates=1, init_from=os.path.join(out, "last"))
        )
        config = Translator.from_pretrained(os.path.join(warm, "last")).model.config
        assert config.extra["trained_objectives"] == ["ar", "janus"]


def test_a_metrics_record_means_its_window_and_logs_the_rate_its_update_used(corpus_dir, tmp_path):
    """--log-every 3 against --log-every 1 on the same seeded run: the loss, every loss term and the
    gradient norm of a record are the means of its 3 updates; ``lr`` is the rate the record's last
    update ran at (warm-up: update u at lr x u / warmup-updates)."""
    from janus_fast.training.train import train

    runs = {}
    for every in (1, 3):
        out = str(tmp_path / f"every{every}")
        train(tiny_train_config(corpus_dir, out, log_every=every, max_updates=6))
        with open(os.path.join(out, "metrics.jsonl")) as handle:
            runs[every] = [r for r in map(json.loads, handle) if r["type"] == "train"]
    single, windows = runs[1], runs[3]
    assert [r["update"] for r in windows] == [3, 6] and [r["update"] for r in single] == list(range(1, 7))
    names = [k for k in windows[0] if k not in ("type", "update", "epoch", "tokens_per_second", "lr")]
    assert {"loss", "grad_norm", "ce_ar", "ce_nar"} <= set(names)
    for window in windows:
        covered = [r for r in single if window["update"] - 3 < r["update"] <= window["update"]]
        for name in names:
            assert window[name] == pytest.approx(sum(r[name] for r in covered) / 3, rel=1e-5), name
    assert [r["lr"] for r in single] == pytest.approx([1e-3 * u / 10 for u in range(1, 7)])


def test_pairs_with_an_empty_side_are_left_out_with_a_warning(corpus_dir, tmp_path):
    """Blank targets (a distillation that gave nothing) leave their pairs out of training, and blank
    validation lines out of its loss and BLEU: said, with how many, not silently."""
    from janus_fast.training.train import train

    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    for split, every in (("train", 4), ("val", 5)):
        path = data / f"{split}.en"
        lines = path.read_text(encoding="utf-8").splitlines()
        path.write_text("".join(("" if i % every == 0 else line) + "\n" for i, line in enumerate(lines)))
    with pytest.warns(UserWarning) as caught:
        train(tiny_train_config(str(data), str(tmp_path / "run"), max_updates=1))
    said = [str(w.message) for w in caught if "have an empty side" in str(w.message)]
    assert any("training split" in m and "100 of 400 line pairs" in m for m in said), said
    assert any("validation split" in m and "8 of 40 line pairs" in m and "BLEU are of the others" in m for m in said)


def test_a_refused_init_from_leaves_no_tokenizer_behind(corpus_dir, tmp_path):
    """``--init-from`` with another architecture is refused before any save; the tokenizer the start
    had written goes too, so the corrected command is not refused as "a run with other options"."""
    from janus_fast.checkpoint import CheckpointError
    from janus_fast.training.train import train

    source = tmp_path / "source"
    train(tiny_train_config(corpus_dir, str(source), max_updates=1))
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="--init-from .* incompatible"):
        train(tiny_train_config(corpus_dir, str(run), max_updates=1, init_from=str(source / "last"), d_model=16))
    assert not (run / "spm.model").exists() and not (run / "spm.json").exists()
    train(tiny_train_config(corpus_dir, str(run), max_updates=1))  # the corrected command: a fresh start
    assert (run / "last").is_dir()


# --- probe 26 ----------------------------------------------------------------------------------------


def test_a_resume_inside_a_logging_window_logs_the_records_of_an_uninterrupted_run(corpus_dir, tmp_path):
    """The loss terms summed since the last train record are saved with the run: stopped at update 3
    and resumed, the record at update 4 averages updates 1-4 as the uninterrupted run's does (it
    averaged 4 only: the sums were the process's)."""
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    train(tiny_train_config(corpus_dir, straight, max_updates=6, log_every=4))
    train(tiny_train_config(corpus_dir, interrupted, max_updates=3, log_every=4))
    train(tiny_train_config(corpus_dir, interrupted, max_updates=6, log_every=4))
    expected, resumed = train_losses(straight), train_losses(interrupted)
    assert sorted(resumed) == sorted(expected) == [4]
    assert resumed[4] == pytest.approx(expected[4], rel=1e-6)


def test_a_folder_with_an_earlier_runs_checkpoints_but_no_last_is_refused(corpus_dir, tmp_path):
    """Without last/ nothing can resume; a new run there overwrote best/ and some saves, cut
    metrics.jsonl and left the other saves mixed with its own. Refused, and nothing touched."""
    from janus_fast.data import InputError

    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=4, save_every=2, keep_every=2))
    shutil.rmtree(os.path.join(out, "last"))
    before = {name: sorted(os.listdir(os.path.join(out, name))) for name in ("best", "saves")}
    with open(os.path.join(out, "metrics.jsonl"), "rb") as handle:
        metrics = handle.read()
    with pytest.raises(InputError, match=r"holds best/ and saves/ of an earlier run but no last/ to resume it from"):
        train(tiny_train_config(corpus_dir, out, max_updates=4, save_every=2, keep_every=2))
    assert {name: sorted(os.listdir(os.path.join(out, name))) for name in ("best", "saves")} == before
    with open(os.path.join(out, "metrics.jsonl"), "rb") as handle:
        assert handle.read() == metrics
    # a start that a kill stopped before any checkpoint (only the tokenizer there) starts again
    fresh = str(tmp_path / "fresh")
    train(tiny_train_config(corpus_dir, fresh, max_updates=0))
    assert train(tiny_train_config(corpus_dir, fresh, max_updates=2)).update == 2


def test_train_refuses_one_language_for_both_sides_and_paths_of_the_wrong_kind(corpus_dir, tmp_path):
    from janus_fast.checkpoint import CheckpointError
    from janus_fast.data import InputError

    out = str(tmp_path / "run")
    with pytest.raises(InputError, match="--source-lang and --target-lang are both de"):
        train(tiny_train_config(corpus_dir, out, source_lang="de", target_lang="de"))
    with pytest.raises(InputError, match=r"--data-dir \S+train.de: a file, not a folder"):
        train(tiny_train_config(os.path.join(corpus_dir, "train.de"), out))
    with pytest.raises(InputError, match=r"--data-dir \S+missing: no such folder"):
        train(tiny_train_config(str(tmp_path / "missing"), out))
    with pytest.raises(CheckpointError, match=r"--init-from \S+: not a checkpoint \(no config.json\)"):
        train(tiny_train_config(corpus_dir, out, init_from=corpus_dir))


def test_init_from_says_that_it_ignores_a_vocabulary_size_and_tokenizer_type(corpus_dir, tmp_path):
    base = str(tmp_path / "base")
    train(tiny_train_config(corpus_dir, base, max_updates=2))
    with pytest.warns(UserWarning, match=r"--vocab-size 500 and --tokenizer-type 'bpe' ignored: with --init-from"):
        state = train(
            tiny_train_config(
                corpus_dir, str(tmp_path / "warm"), max_updates=1, init_from=os.path.join(base, "last"),
                vocab_size=500, tokenizer_type="bpe",
            )
        )  # fmt: skip
    assert state.update == 1


def test_resume_refusals_name_the_loss_weight_and_the_train_limit_that_changed():
    """--weights-* are options of their own (before: "--weights {dict} -> {dict}"); a --train-limit
    change is named once, not also as other training data behind --data-dir."""
    from dataclasses import asdict

    from janus_fast.training.train import check_resumable

    config = train_config_for_check(weights=LossWeights(kl_ar_nar=0.3, detach_ar_in_kl=True), train_limit=100)
    saved = json.loads(json.dumps(asdict(train_config_for_check())))
    saved.update({"train_source_sha256": "a", "train_target_sha256": "b"})
    with pytest.raises(ValueError) as refused:
        check_resumable(saved, config, {"train_source_sha256": "c", "train_target_sha256": "d"})
    message = str(refused.value)
    assert "--weights-kl-ar-nar 1.0 -> 0.3" in message and "--weights-detach-ar-in-kl False -> True" in message
    assert "--train-limit None -> 100" in message and "--data-dir" not in message and "{" not in message


def train_config_for_check(**overrides):  # noqa: ANN003, ANN201
    from janus_fast.training.train import train_config

    return train_config(output_dir="out", data_dir="data", **overrides)


def test_a_dead_peer_is_one_error_line(monkeypatch, capsys):
    """When another rank of a multi-machine run dies, the survivor's collective raises gloo's error
    with C++ stack frames (about 110 lines before); the command says what happened in one line.
    The same error outside torchrun is left alone (not a peer's doing)."""
    import argparse

    import torch.distributed  # noqa: F401 - the command has imported it when a collective fails

    from janus_fast.cli import _run

    gloo = (
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:4512: Connection reset by peer\n"
        "Exception raised from ... (most recent call first):\nframe #0: c10::Error::Error(...)\nframe #1: ..."
    )

    def collective_fails(args: argparse.Namespace) -> int:
        raise RuntimeError(gloo)

    args = argparse.Namespace(handler=collective_fails, command="train")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _run(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another process of this torchrun job failed" in err and "frame #" not in err
    assert "Connection reset by peer" in err and "Rerun the same command" in err
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(RuntimeError, match="Connection reset by peer"):
        _run(args)
