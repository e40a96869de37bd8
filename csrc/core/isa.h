// The instruction sets the CPU kernels are written for, and the widest one this CPU runs, decided
// at run time from what it reports (cpuid): each kernel is compiled for every ISA behind a target
// attribute and the caller picks one, so one binary runs everywhere. No torch.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define JANUS_X86 1
#define JANUS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define JANUS_AVX512_BF16 __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx2,fma")))
#define JANUS_AVX512_VNNI __attribute__((target("avx512vnni,avx512f,avx512bw,avx512vl,avx2,fma")))
#define JANUS_AVX2 __attribute__((target("avx2,fma")))
#else
#define JANUS_X86 0
#endif

namespace janus_fast {
namespace core {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// The widest kernel this CPU runs, from what it reports (cpuid).
inline Isa detect_isa() {
#if JANUS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

// AVX-512 VNNI (vpdpbusd: four uint8 x int8 products summed into each int32 lane), which the int8
// products use where the Isa is AVX-512; independent of AVX-512 BF16 (some CPUs have one only).
inline bool has_avx512_vnni() {
#if JANUS_X86
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return has;
#else
  return false;
#endif
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace core
}  // namespace janus_fast
