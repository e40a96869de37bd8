// Unit tests of csrc/core/logit_reduction.h without Python or libtorch (built by CMakeLists.txt, run
// by ctest): every ISA this CPU runs against a double-precision reduction written here, on rows of
// random logits (lengths around the vector widths, ties, -inf entries) and on the rows that must be
// reported as not finite. Failures print their lines (tests/check.h); the test then exits non-zero.
#include "core/logit_reduction.h"
#include "tests/check.h"
#include "tests/isas_here.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

namespace {

using janus_fast::core::Isa;
using janus_fast::core::LogitReduction;

const float kInf = std::numeric_limits<float>::infinity();

// The expected reduction of a finite row (at least one value above -inf), in double.
struct Expected {
  int64_t argmax;
  double max;
  double log_sum_exp;
};

Expected expected_of(const std::vector<float>& x) {
  int64_t argmax = 0;
  for (size_t j = 1; j < x.size(); ++j)
    if (x[j] > x[argmax]) argmax = static_cast<int64_t>(j);
  double sum = 0.0;
  for (const float v : x) sum += std::exp(static_cast<double>(v) - x[argmax]);
  return {argmax, x[argmax], std::log(sum)};
}

void test_random_rows() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  const int64_t lengths[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 100, 8000, 8003};
  for (const Isa isa : isas_here()) {
    for (const int64_t n : lengths) {
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<float> x(n);
        for (float& v : x) v = normal(rng);
        if (trial % 4 == 1) {  // a tie for the maximum: the first index must win
          const int64_t a = rng() % n, b = rng() % n;
          x[a] = x[b] = 40.0f;
        }
        if (trial % 4 == 2)  // -inf entries (but not all)
          for (int64_t j = 0; j + 1 < n; j += 3) x[j] = -kInf;
        if (trial % 4 == 3)  // the maximum in the tail past the vectors
          x[n - 1] = 50.0f;
        const Expected want = expected_of(x);
        const LogitReduction got = janus_fast::core::reduce_logits_isa(isa, x.data(), n);
        CHECK(got.finite);
        CHECK(got.argmax == want.argmax);
        CHECK(got.max == static_cast<float>(want.max));
        CHECK(std::fabs(got.log_sum_exp - want.log_sum_exp) <= 1e-5 * (1.0 + std::fabs(want.log_sum_exp)));
      }
    }
  }
}

void test_rows_not_finite() {
  const float nan = std::nanf("");
  for (const Isa isa : isas_here()) {
    for (const int64_t n : {1, 16, 40, 8000}) {
      for (const int64_t at : {int64_t{0}, n / 2, n - 1}) {
        for (const float bad : {nan, kInf}) {
          std::vector<float> x(n, 1.0f);
          x[at] = bad;
          CHECK(!janus_fast::core::reduce_logits_isa(isa, x.data(), n).finite);
        }
      }
      std::vector<float> all_minus_inf(n, -kInf);
      CHECK(!janus_fast::core::reduce_logits_isa(isa, all_minus_inf.data(), n).finite);
    }
    CHECK(!janus_fast::core::reduce_logits_isa(isa, nullptr, 0).finite);
  }
}

}  // namespace

int main() {
  test_random_rows();
  test_rows_not_finite();
  if (failures == 0) std::printf("test_logit_reduction: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
