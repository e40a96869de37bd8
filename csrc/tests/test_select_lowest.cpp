// Unit tests of csrc/core/select_lowest.h without Python or libtorch (built by CMakeLists.txt,
// run by ctest). Plain checks: the first failure prints its line and the test exits non-zero.
#include "core/select_lowest.h"
#include "tests/check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

using janus_fast::core::OnlineSoftmaxState;

void test_schedule() {
  using janus_fast::core::num_to_remask;
  // L = 12: 10 real tokens, 4 iterations -> 7, 5, 2, 0.
  CHECK(num_to_remask(12, 0, 4) == 7);
  CHECK(num_to_remask(12, 1, 4) == 5);
  CHECK(num_to_remask(12, 2, 4) == 2);
  CHECK(num_to_remask(12, 3, 4) == 0);
  CHECK(num_to_remask(2, 0, 10) == 0);   // bos and eos only
  CHECK(num_to_remask(30, 0, 1) == 0);   // one iteration: nothing re-masked
  for (int64_t length = 2; length < 50; ++length) {
    for (int64_t total = 1; total <= 10; ++total) {
      for (int64_t t = 0; t < total; ++t) {
        const int64_t n = num_to_remask(length, t, total);
        CHECK(n >= 0 && n <= length - 2);
        CHECK(n * total <= (length - 2) * (total - 1 - t));
        CHECK((n + 1) * total > (length - 2) * (total - 1 - t));
      }
    }
  }
}

void test_order() {
  using janus_fast::core::score_position_less;
  const float nan = std::nanf("");
  CHECK(score_position_less(-1.0f, 5, 0.0f, 1));
  CHECK(!score_position_less(0.0f, 1, -1.0f, 5));
  CHECK(score_position_less(-1.0f, 1, -1.0f, 2));   // tie -> lower position first
  CHECK(!score_position_less(-1.0f, 2, -1.0f, 1));
  CHECK(!score_position_less(-1.0f, 2, -1.0f, 2));  // irreflexive
  CHECK(score_position_less(-0.0f, 1, 0.0f, 2));    // -0 == 0
  CHECK(!score_position_less(-0.0f, 2, 0.0f, 1));
  CHECK(score_position_less(HUGE_VALF, 9, nan, 1));  // NaN after every number
  CHECK(!score_position_less(nan, 1, HUGE_VALF, 9));
  CHECK(score_position_less(nan, 1, nan, 2));
  CHECK(score_position_less(-HUGE_VALF, 3, -1e30f, 1));
}

// select_lowest must pick exactly the first `count` of a full sort by (score, position).
void test_select_lowest_against_sort() {
  std::mt19937 generator(1234);
  std::vector<int64_t> order;
  for (int trial = 0; trial < 3000; ++trial) {
    const int64_t size = std::uniform_int_distribution<int64_t>(0, 60)(generator);
    const int64_t begin = std::uniform_int_distribution<int64_t>(0, 3)(generator);
    std::vector<float> scores(static_cast<size_t>(begin + size + 2));
    const int kind = trial % 3;
    for (float& score : scores) {
      if (kind == 0) {
        score = std::uniform_real_distribution<float>(-5.0f, 0.0f)(generator);
      } else {  // heavy ties, some NaN and infinities
        const int value = std::uniform_int_distribution<int>(-3, 1)(generator);
        score = value == 1 ? (kind == 1 ? std::nanf("") : -HUGE_VALF) : static_cast<float>(value);
      }
    }
    const int64_t count = std::uniform_int_distribution<int64_t>(-1, size + 1)(generator);
    std::vector<char> picked(scores.size(), 0);
    janus_fast::core::select_lowest(scores.data(), begin, begin + size, count, order,
                                    [&](int64_t position) { picked[position] += 1; });
    std::vector<int64_t> sorted;
    for (int64_t p = begin; p < begin + size; ++p) sorted.push_back(p);
    std::sort(sorted.begin(), sorted.end(), [&](int64_t a, int64_t b) {
      return janus_fast::core::score_position_less(scores[a], a, scores[b], b);
    });
    const int64_t expected = std::max<int64_t>(0, std::min(count, size));
    std::vector<char> want(scores.size(), 0);
    for (int64_t i = 0; i < expected; ++i) want[sorted[i]] = 1;
    CHECK(picked == want);
  }
}

// Reduce a row with add_logit, optionally split in two merged halves.
OnlineSoftmaxState reduce(const std::vector<float>& row, int64_t mask_id, size_t split) {
  OnlineSoftmaxState left = janus_fast::core::empty_state();
  OnlineSoftmaxState right = janus_fast::core::empty_state();
  for (size_t i = 0; i < row.size(); ++i) {
    auto& state = i < split ? left : right;
    janus_fast::core::add_logit(state, row[i], static_cast<int64_t>(i),
                                static_cast<int64_t>(i) != mask_id);
  }
  return janus_fast::core::merge_states(left, right);
}

void test_online_softmax() {
  std::mt19937 generator(99);
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t vocab = std::uniform_int_distribution<size_t>(2, 300)(generator);
    const int64_t mask_id = std::uniform_int_distribution<int64_t>(0, vocab - 1)(generator);
    std::vector<float> row(vocab);
    for (float& value : row) {
      value = trial % 2 ? static_cast<float>(std::uniform_int_distribution<int>(-3, 3)(generator))
                        : std::normal_distribution<float>(0.0f, 4.0f)(generator);
      if (trial % 5 == 0 && std::uniform_int_distribution<int>(0, 3)(generator) == 0) {
        value = -HUGE_VALF;
      }
    }
    // Two-pass reference in double.
    double max_value = -HUGE_VAL;
    for (float value : row) max_value = std::max<double>(max_value, value);
    double sum = 0.0;
    for (float value : row) sum += value == -HUGE_VALF ? 0.0 : std::exp(value - max_value);
    int64_t best = -1;
    for (size_t i = 0; i < vocab; ++i) {
      if (static_cast<int64_t>(i) == mask_id) continue;
      if (best < 0 || row[i] > row[best]) best = static_cast<int64_t>(i);
    }
    const double expected_score = row[best] - (max_value + std::log(sum));
    const size_t split = std::uniform_int_distribution<size_t>(0, vocab)(generator);
    const OnlineSoftmaxState state = reduce(row, mask_id, split);
    const int64_t token = janus_fast::core::chosen_token(state, mask_id);
    CHECK(token == best);
    if (max_value == -HUGE_VAL) continue;  // every logit -inf: score NaN, not compared
    const double score = row[token] - (state.max_value + std::log(state.sum_exp));
    if (std::isinf(expected_score)) {
      CHECK(score == expected_score);
    } else {
      CHECK(std::fabs(score - expected_score) <= 1e-4 + 1e-5 * std::fabs(expected_score));
      CHECK(std::fabs(janus_fast::core::token_log_prob(state, state.best_value) - expected_score) <=
            1e-4 + 1e-5 * std::fabs(expected_score));
    }
  }
  // All candidates -inf: lowest index that is not the mask token.
  const std::vector<float> row = {-HUGE_VALF, 2.0f, -HUGE_VALF};
  CHECK(janus_fast::core::chosen_token(reduce(row, 1, 1), 1) == 0);
  const std::vector<float> row0 = {5.0f, -HUGE_VALF, -HUGE_VALF};
  CHECK(janus_fast::core::chosen_token(reduce(row0, 0, 2), 0) == 1);
}

}  // namespace

int main() {
  test_schedule();
  test_order();
  test_select_lowest_against_sort();
  test_online_softmax();
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("test_select_lowest: all checks passed\n");
  return EXIT_SUCCESS;
}
