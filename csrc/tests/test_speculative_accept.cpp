// Unit tests of csrc/core/speculative_accept.h without Python or libtorch (built by CMakeLists.txt,
// run by ctest): rows written out by hand, then random rows against the rule stated independently
// (the kept tokens are a prefix that AR greedy, one step at a time, would have produced).
#include "core/speculative_accept.h"
#include "tests/check.h"

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using janus_fast::core::accept_drafted;
constexpr int64_t kEos = 3;

std::vector<int64_t> accept(const std::vector<int64_t>& draft, const std::vector<int64_t>& verified,
                            const std::vector<bool>& relaxed, int64_t count, int64_t& kept) {
  std::vector<int64_t> out(count + 1, 99);
  bool marks[64] = {};
  for (size_t i = 0; i < relaxed.size(); ++i) marks[i] = relaxed[i];
  kept = accept_drafted(draft.data(), verified.data(), relaxed.empty() ? nullptr : marks, count, kEos, out.data());
  return out;
}

void test_by_hand() {
  int64_t kept = 0;
  // mismatch at the third drafted token: two drafts kept, then AR's token
  std::vector<int64_t> out = accept({5, 6, 7, 8}, {5, 6, 9, 8, 1}, {}, 4, kept);
  CHECK(kept == 3 && out[0] == 5 && out[1] == 6 && out[2] == 9 && out[3] == -1 && out[4] == -1);
  // all agree: every draft and the token after them
  out = accept({5, 6, 7, 8}, {5, 6, 7, 8, 11}, {}, 4, kept);
  CHECK(kept == 5 && out[4] == 11);
  // an agreed eos ends the sentence
  out = accept({5, kEos, 7, 8}, {5, kEos, 7, 8, 2}, {}, 4, kept);
  CHECK(kept == 2 && out[1] == kEos && out[2] == -1);
  // AR's own eos at the first mismatch ends it too
  out = accept({5, 6}, {kEos, 6, 7}, {}, 2, kept);
  CHECK(kept == 1 && out[0] == kEos && out[1] == -1);
  // nothing drafted: AR's token alone
  out = accept({}, {4}, {}, 0, kept);
  CHECK(kept == 1 && out[0] == 4);
  // a relaxed mark keeps a differing draft
  out = accept({5, 6, 7, 8}, {5, 6, 9, 8, 1}, {false, false, true, false}, 4, kept);
  CHECK(kept == 5 && out[2] == 7 && out[3] == 8 && out[4] == 1);
}

void test_random_rows() {
  std::mt19937 generator(7);
  std::uniform_int_distribution<int> token(3, 6), width(0, 10), coin(0, 3);
  for (int trial = 0; trial < 20000; ++trial) {
    const int64_t count = width(generator);
    std::vector<int64_t> draft(count), verified(count + 1);
    std::vector<bool> relaxed(count);
    for (int64_t i = 0; i < count; ++i) {
      draft[i] = token(generator);
      relaxed[i] = coin(generator) == 0;
    }
    for (int64_t i = 0; i <= count; ++i) verified[i] = i < count && coin(generator) ? draft[i] : token(generator);
    const bool use_relaxed = trial % 2 == 1;
    int64_t kept = 0;
    const std::vector<int64_t> out = accept(draft, verified, use_relaxed ? relaxed : std::vector<bool>{}, count, kept);
    CHECK(kept >= 1 && kept <= count + 1);
    // every kept token but the last is an accepted draft; the last is the draft (accepted) or AR's
    for (int64_t i = 0; i + 1 < kept; ++i) {
      CHECK(out[i] == draft[i] && (draft[i] == verified[i] || (use_relaxed && relaxed[i])));
      CHECK(out[i] != kEos);
    }
    const int64_t last = kept - 1;
    const bool last_accepted = last < count && (draft[last] == verified[last] || (use_relaxed && relaxed[last]));
    CHECK(out[last] == (last_accepted ? draft[last] : verified[last]));
    // it stops only at a rejection, at the end of the draft, or at eos
    CHECK(!last_accepted || out[last] == kEos);
    for (int64_t i = kept; i <= count; ++i) CHECK(out[i] == -1);
    if (!use_relaxed)  // exact: the kept tokens are AR's choices
      for (int64_t i = 0; i < kept; ++i) CHECK(out[i] == verified[i]);
  }
}

}  // namespace

int main() {
  test_by_hand();
  test_random_rows();
  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  else std::printf("test_speculative_accept: all checks passed\n");
  return failures ? 1 : 0;
}
