// The choice of tokens from the last states of a pass without materialising its logits (decoder_passes.h's
// select_tokens, select_top_tokens): greedy search's argmax and its log-softmax, as torch computes them,
// the rank of a candidate token (speculative decoding's relaxed verification), and a beam search step's
// k best tokens per row.
#include "cpu/decoder_passes.h"

#include <cstring>
#include <limits>

#include "core/logit_reduction.h"
#include "core/top_k.h"

namespace janus_fast {
namespace cpu {
namespace {

// The first index of the maximum of `row` (vocab,) with the `excluded` ids counted as -inf (all -inf
// -> 0, as torch.argmax).
int64_t first_max_without(const float* row, int64_t vocab, const std::vector<int64_t>& excluded) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto value = [&](int64_t id) {
    for (const int64_t e : excluded)
      if (e == id) return neg_inf;
    return row[id];
  };
  int64_t best = 0;
  float best_value = value(0);
  for (int64_t id = 1; id < vocab; ++id) {
    const float v = value(id);
    if (v > best_value) best = id, best_value = v;
  }
  return best;
}

struct GreedyToken {
  int64_t id;
  float score;  // the token's log-softmax over the whole vocabulary
};

// greedy_token for a row holding NaN or +inf, or only -inf: torch's log_softmax and argmax, whose
// rules for those rows (a NaN is the argmax; the scores are NaN) the engine follows exactly.
GreedyToken greedy_token_exact(const float* row, int64_t vocab, const std::vector<int64_t>& excluded, int64_t forced) {
  const auto options = at::TensorOptions().dtype(at::kFloat);
  at::Tensor log_probs = at::_log_softmax(at::from_blob(const_cast<float*>(row), {vocab}, options), 0, false);
  if (forced >= 0) return {forced, log_probs.data_ptr<float>()[forced]};
  const at::Tensor scores = log_probs.clone();
  for (const int64_t id : excluded) log_probs.select(0, id).fill_(-std::numeric_limits<float>::infinity());
  const int64_t id = at::argmax(log_probs).item<int64_t>();
  return {id, scores.data_ptr<float>()[id]};
}

// The greedy choice of one row of logits: the argmax over the vocabulary without the `excluded` ids
// (ties -> lowest id; a NaN is the argmax), or `forced` where that is >= 0, and that token's
// log-softmax over the whole vocabulary (torch's log_softmax: NaN when the row holds NaN or +inf, or
// only -inf). One vectorised reduction of the row (core/logit_reduction.h); no log-probabilities
// are written.
GreedyToken greedy_token(Isa isa, const float* row, int64_t vocab, const std::vector<int64_t>& excluded,
                         int64_t forced) {
  const core::LogitReduction reduction = core::reduce_logits_isa(isa, row, vocab);
  if (!reduction.finite) return greedy_token_exact(row, vocab, excluded, forced);
  int64_t id = forced;
  if (id < 0) {
    id = reduction.argmax;
    for (const int64_t e : excluded)
      if (e == id) id = first_max_without(row, vocab, excluded);
  }
  return {id, row[id] - reduction.max - reduction.log_sum_exp};
}

// How a candidate token ranks in a row of logits: its log-softmax over the whole vocabulary and the
// number of ids outside `excluded` with a strictly larger logit (0: a top choice). An excluded
// candidate, or a row with NaN or infinities, ranks `vocab` (never among a top k).
struct CandidateRank {
  float score;
  int64_t rank;
};

CandidateRank rank_candidate(const float* row, int64_t vocab, const std::vector<int64_t>& excluded,
                             int64_t candidate, const core::LogitReduction& reduction) {
  const float value = row[candidate];
  const float score = value - reduction.max - reduction.log_sum_exp;
  bool excluded_candidate = false;
  for (const int64_t e : excluded) excluded_candidate |= e == candidate;
  if (!reduction.finite || excluded_candidate) return {score, vocab};
  int64_t rank = 0;
  for (int64_t id = 0; id < vocab; ++id) rank += row[id] > value;
  for (const int64_t e : excluded) rank -= row[e] > value;
  return {score, rank};
}

// Runs the final norm and the vocabulary projection over `states` (rows, d), calling choose(r, logits
// of row r) once per row: in tiles of rows whose logits stay in a per-thread buffer, or, with fewer rows
// than threads (one sentence's AR step), with the projection's columns split across the threads
// (linear) and the rows reduced after; the same logits either way.
template <typename Choose>
void for_each_logit_row(const DecoderWeights& d, float* states, int64_t rows, const Choose& choose) {
  if (rows == 0) return;
  if (d.final_norm.weight != nullptr) layer_norm_rows(states, rows, d.dim, d.final_norm, states);
  const int64_t threads = at::get_num_threads();
  if (rows < threads) {
    thread_local std::vector<float> logits_buffer;
    float* logits = scratch(logits_buffer, rows * d.vocab);
    linear(states, rows, d.dim, d.vocab_projection, logits, d.vocab);
    for (int64_t r = 0; r < rows; ++r) choose(r, logits + r * d.vocab);
    return;
  }
  const Isa isa = active_isa();
  const int64_t tile = std::min<int64_t>(32, std::max<int64_t>(1, (rows + threads - 1) / threads));
  const int64_t num_tiles = (rows + tile - 1) / tile;
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> logits_buffer;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = t * tile, n = std::min(tile, rows - first);
      float* logits = scratch(logits_buffer, n * d.vocab);
      core::gemm(isa, n, states + first * d.dim, d.dim, d.vocab_projection, logits, d.vocab, 0, d.vocab);
      for (int64_t i = 0; i < n; ++i) choose(first + i, logits + i * d.vocab);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> select_tokens(const DecoderWeights& d, float* states, int64_t rows,
                                                 const std::vector<int64_t>& excluded, const int64_t* forced_ids,
                                                 const Candidates& candidates) {
  at::Tensor best = at::empty({rows}, at::TensorOptions().dtype(at::kLong));
  at::Tensor scores = at::empty({rows}, at::TensorOptions().dtype(at::kFloat));
  int64_t* best_ids = best.data_ptr<int64_t>();
  float* best_scores = scores.data_ptr<float>();
  const Isa isa = active_isa();
  // greedy_token (and the candidate's rank) of row r of the pass, from its logits
  for_each_logit_row(d, states, rows, [&](int64_t r, const float* row) {
    const int64_t forced = forced_ids != nullptr ? forced_ids[r] : -1;
    const GreedyToken token = greedy_token(isa, row, d.vocab, excluded, forced);
    best_ids[r] = token.id;
    best_scores[r] = token.score;
    if (candidates.ids != nullptr) {
      const int64_t candidate = candidates.ids[r];
      CandidateRank ranked{std::numeric_limits<float>::quiet_NaN(), d.vocab};
      if (candidate >= 0)
        ranked = rank_candidate(row, d.vocab, excluded, candidate, core::reduce_logits_isa(isa, row, d.vocab));
      candidates.scores[r] = ranked.score;
      candidates.ranks[r] = ranked.rank;
    }
  });
  return {best, scores};
}

std::tuple<at::Tensor, at::Tensor> select_top_tokens(const DecoderWeights& d, float* states, int64_t rows,
                                                     const std::vector<int64_t>& excluded,
                                                     const int64_t* forced_ids, int64_t k, bool nan_as_impossible) {
  k = std::min(k, d.vocab);
  at::Tensor top_ids = at::empty({rows, k}, at::TensorOptions().dtype(at::kLong));
  at::Tensor top_scores = at::empty({rows, k}, at::TensorOptions().dtype(at::kFloat));
  int64_t* all_ids = top_ids.data_ptr<int64_t>();
  float* all_scores = top_scores.data_ptr<float>();
  const Isa isa = active_isa();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for_each_logit_row(d, states, rows, [&](int64_t r, const float* row) {
    int64_t* ids = all_ids + r * k;
    float* scores = all_scores + r * k;
    const int64_t forced = forced_ids != nullptr ? forced_ids[r] : -1;
    const core::LogitReduction reduction = core::reduce_logits_isa(isa, row, d.vocab);
    if (!reduction.finite) {  // torch's rules for rows with NaN or infinities (BeamChoice.choose's ops)
      const auto options = at::TensorOptions().dtype(at::kFloat);
      at::Tensor log_probs = at::_log_softmax(at::from_blob(const_cast<float*>(row), {d.vocab}, options), 0, false);
      if (nan_as_impossible) log_probs = at::nan_to_num(log_probs, neg_inf);
      at::Tensor allowed = log_probs.clone();
      for (const int64_t id : excluded) allowed.select(0, id).fill_(neg_inf);
      if (forced >= 0) {
        allowed.fill_(neg_inf);
        allowed.select(0, forced).copy_(log_probs.select(0, forced));
      }
      const auto [values, indices] = at::topk(allowed, k);
      std::memcpy(scores, values.data_ptr<float>(), k * sizeof(float));
      std::memcpy(ids, indices.data_ptr<int64_t>(), k * sizeof(int64_t));
      return;
    }
    const float offset = reduction.max + reduction.log_sum_exp;  // log-softmax = logit - offset
    int64_t found = 0;
    if (forced >= 0) {
      ids[0] = forced, scores[0] = row[forced] - offset, found = 1;
    } else {
      thread_local std::vector<float> values_buffer;
      found = core::top_k_isa(isa, row, d.vocab, k, excluded.data(), static_cast<int64_t>(excluded.size()), ids,
                              scratch(values_buffer, k));
      for (int64_t i = 0; i < found; ++i) scores[i] = row[ids[i]] - offset;
    }
    // the rest of the k (a forced row; more excluded ids than vocab - k): impossible entries, on the
    // lowest ids not taken
    for (int64_t id = 0; found < k; ++id) {
      bool taken = false;
      for (int64_t i = 0; i < found; ++i) taken |= ids[i] == id;
      if (!taken) ids[found] = id, scores[found++] = neg_inf;
    }
  });
  return {top_ids, top_scores};
}

}  // namespace cpu
}  // namespace janus_fast
