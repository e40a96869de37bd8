// Unit tests of csrc/core/top_k.h without Python or libtorch (built by CMakeLists.txt, run by ctest):
// every ISA this CPU runs against a full sort written here (value descending, index ascending on
// ties, excluded ids left out), on random rows with ties, -inf entries, excluded ids, k from 1 to 16
// and lengths around the vector widths. Failures print their lines (tests/check.h).
#include "core/top_k.h"
#include "tests/check.h"
#include "tests/isas_here.h"

#include <algorithm>
#include <limits>
#include <random>
#include <vector>

namespace {

using janus_fast::core::Isa;

std::vector<int64_t> expected_top(const std::vector<float>& x, int64_t k, const std::vector<int64_t>& excluded) {
  std::vector<int64_t> order;
  for (int64_t j = 0; j < static_cast<int64_t>(x.size()); ++j)
    if (std::find(excluded.begin(), excluded.end(), j) == excluded.end()) order.push_back(j);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
  order.resize(std::min<int64_t>(k, static_cast<int64_t>(order.size())));
  return order;
}

void test_random_rows() {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int64_t lengths[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 100, 8000, 8003};
  const int64_t ks[] = {1, 2, 4, 8, 16};
  for (const Isa isa : isas_here()) {
    for (const int64_t n : lengths) {
      for (const int64_t k : ks) {
        for (int trial = 0; trial < 8; ++trial) {
          std::vector<float> x(n);
          for (float& v : x) v = normal(rng);
          if (trial % 4 == 1)  // ties among the largest: lower indices first
            for (int64_t j = 0; j < n; j += 5) x[j] = 9.0f;
          if (trial % 4 == 2)  // -inf entries, most of the row
            for (int64_t j = 0; j < n; ++j)
              if (j % 7 != 3) x[j] = neg_inf;
          if (trial % 4 == 3)  // ascending: every vector raises the k-th value
            for (int64_t j = 0; j < n; ++j) x[j] = static_cast<float>(j);
          std::vector<int64_t> excluded;
          if (trial % 2 == 1 && n > 3) excluded = {0, n - 1, n / 2};
          std::vector<int64_t> ids(k, -1);
          std::vector<float> scratch(k);
          const int64_t count = janus_fast::core::top_k_isa(isa, x.data(), n, k, excluded.data(),
                                                            static_cast<int64_t>(excluded.size()), ids.data(),
                                                            scratch.data());
          const std::vector<int64_t> expected = expected_top(x, k, excluded);
          CHECK(count == static_cast<int64_t>(expected.size()));
          for (int64_t i = 0; i < count && i < static_cast<int64_t>(expected.size()); ++i) CHECK(ids[i] == expected[i]);
        }
      }
    }
  }
}

}  // namespace

int main() {
  test_random_rows();
  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
