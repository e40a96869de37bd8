// The instruction sets a C++ unit test runs its kernels with: the plain C++ form always, and each
// vector form this CPU supports (core/isa.h).
#pragma once

#include <vector>

#include "core/isa.h"

namespace {

std::vector<janus_fast::core::Isa> isas_here() {
  using janus_fast::core::Isa;
  std::vector<Isa> isas = {Isa::kScalar};
  const Isa best = janus_fast::core::detect_isa();
  if (best >= Isa::kAvx2) isas.push_back(Isa::kAvx2);
  if (best >= Isa::kAvx512) isas.push_back(Isa::kAvx512);
  return isas;
}

}  // namespace
